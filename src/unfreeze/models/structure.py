"""The structure of a decoder-only base model, read from its modules, and the check that its stages are exact.

`unfreeze classify` runs a Hugging Face base model (`AutoModel`: GPT2Model, LlamaModel, OPTModel, BloomModel,
Gemma3TextModel, ...) as stages so that the activation cache can start the forward pass at any block:

    0: what the forward does before its first block  ->  1..L: the blocks  ->  L+1: what it does after the last

The stages are the model's own forward cut at block boundaries (`unfreeze.models.staged`): the blocks are the
`nn.ModuleList` of `num_hidden_layers` modules, found wherever it sits (GPT-2's `h`, Llama's `layers`, OPT's
`decoder.layers`); which of the other modules run before the blocks (embeddings, position embeddings, BLOOM's
embedding norm, rotary modules) and which after (final norm, OPT's `project_out`) is read from one traced
forward pass, never from parameter names. Masks (causal, sliding-window, chunked; per layer type), position
embeddings (per layer type too) and ALiBi tensors are whatever the model's forward computes for each block.

`check_staged_forward` compares the stages with the model's own forward on a padded batch longer than its
sliding window or attention chunk, so an architecture whose forward does something else is refused with one
line instead of computing another function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unfreeze.errors import UsageError

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
PROBE_CAP = 1024  # the structure check's longest probe (tokens): a window longer than this is not exercised


@dataclass
class Structure:
    """The modules of a base model's forward pass, in stage order (`before`/`after`/`within` from a traced pass)."""

    token_embedding: nn.Module
    blocks: nn.ModuleList
    others: list[nn.Module]  # the non-block modules the forward may call (children along the path to the blocks)
    before: list[nn.Module] = field(default_factory=list)  # run before block 0 (or never: judged with them)
    after: list[nn.Module] = field(default_factory=list)  # run after the last block (final norm, projections)
    within: list[nn.Module] = field(default_factory=list)  # called between blocks: part of every block stage
    block_outputs: list[int | None] = field(default_factory=list)  # None: a block returns a tensor; n: a tuple of n
    width: int = 0  # of the hidden state between blocks
    output_width: int = 0  # of the forward's output (what the head reads)

    @property
    def final_norm(self) -> nn.Module:
        """The normalisation after the blocks: the last module run after them whose parameters are all per-feature
        vectors (a norm's scale and shift; OPT's `project_out` is a matrix), one with parameters if there is one
        (OLMo's norm has none); an Identity where there is no such module."""
        vectors = [m for m in self.after if all(p.dim() == 1 for p in m.parameters())]
        weighted = [m for m in vectors if any(True for _ in m.parameters())]
        return (weighted or vectors or [nn.Identity()])[-1]


def text_config(body: nn.Module):
    config = body.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _block_list(body: nn.Module, layers: int | None) -> tuple[str, nn.ModuleList] | None:
    """The shallowest ModuleList holding `layers` modules (GPT-2's h, Llama's layers, OPT's decoder.layers)."""
    if not layers:
        return None
    found = [(name, m) for name, m in body.named_modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    return min(found, key=lambda item: item[0].count(".")) if found else None


def read_structure(body: nn.Module) -> Structure:
    """The token embedding, the blocks and the other modules of `body` (no forward pass: works on the meta
    device), or one UsageError naming what was looked for and not found."""
    config = text_config(body)
    layers = getattr(config, "num_hidden_layers", None)
    try:
        token_embedding = body.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        token_embedding = None
    found = _block_list(body, layers)
    missing = [what for what, value in (("a token embedding (get_input_embeddings())", token_embedding),
                                         (f"a ModuleList of num_hidden_layers={layers} blocks", found))
               if value is None]
    if missing:
        raise UsageError(f"--model: cannot read the structure of {type(body).__name__} (missing {'; '.join(missing)}); "
                         "classify supports decoder-only models (see docs/architectures.md)")
    path, blocks = found
    others, container = [], body
    for step in [*path.split("."), None]:  # the children of each module on the way down to the blocks
        nxt = container.get_submodule(step) if step is not None else None
        others += [child for child in container.children() if child is not nxt and child is not blocks]
        container = nxt
        if container is blocks or container is None:
            break
    return Structure(token_embedding, blocks, others)


def order_by_registration(body: nn.Module, structure: Structure) -> Structure:
    """Fill `before`/`after` from the order the modules are registered in, which stands in for the order they
    run in where no forward can run (the meta device) or none is wanted (naming parameters: the final norm is
    the norm registered after the blocks); the widths from the embedding."""
    s, container = structure, body
    path = next(name for name, m in body.named_modules() if m is s.blocks).split(".")
    for step in path:
        names = [name for name, _ in container.named_children()]
        for name, child in container.named_children():
            if child in s.others:
                (s.before if names.index(name) < names.index(step) else s.after).append(child)
        container = container.get_submodule(step)
    s.after = [m for m in s.after if any(True for _ in m.parameters())]
    s.before += [m for m in s.others if m not in s.before + s.after]
    s.width = s.output_width = s.token_embedding.weight.shape[1]
    return s


def attention_implementation(config, requested: str = "auto") -> str:
    """The attention implementation classify runs: SDPA where the architecture has it, else eager (`auto`); an
    explicit request the architecture or this machine cannot honour is a UsageError."""
    from transformers import AutoModel
    from transformers.utils import is_flash_attn_2_available

    if requested not in ATTENTION_CHOICES:
        raise UsageError(f"attention implementation {requested!r}: not one of {', '.join(ATTENTION_CHOICES)}")
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError):
        model_class = None  # transformers cannot build it: building the model reports that in its own words
    name = getattr(model_class, "__name__", getattr(config, "model_type", "this model"))
    sdpa = bool(getattr(model_class, "_supports_sdpa", True))
    if requested == "auto":
        return "sdpa" if sdpa else "eager"
    if requested == "sdpa" and not sdpa:
        raise UsageError(f"attention implementation sdpa: {name} has no SDPA attention; use eager or auto")
    if requested == "flash_attention_2":
        if not getattr(model_class, "_supports_flash_attn", False):
            raise UsageError(f"attention implementation flash_attention_2: {name} does not support it; use auto")
        if not (is_flash_attn_2_available() and torch.cuda.is_available()):
            raise UsageError("attention implementation flash_attention_2: needs the flash-attn package and a CUDA GPU; "
                             "use auto")
    return requested


def layer_mask_kinds(config, count: int) -> list[str]:
    """Each block's attention type as the config names it (`layer_types`; else sliding-window attention when
    `sliding_window` is set, as Mistral and Phi-3 do; else full attention)."""
    kinds = getattr(config, "layer_types", None)
    if kinds and len(kinds) >= count:
        return list(kinds[:count])
    sliding = getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * count


def probe_length(config, cap: int = PROBE_CAP) -> int:
    """Tokens in the structure check's probe: past every sliding window and attention chunk the config sets (so
    the check runs them), at least 16, at most `cap` and the model's longest input."""
    limits = [getattr(config, key, None) for key in ("sliding_window", "attention_chunk_size", "attention_window_size")]
    length = max([16, *[value + 4 for value in limits if isinstance(value, int) and value > 0]])
    longest = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    longest = longest if isinstance(longest, int) and longest > 2 else cap
    return min(length, cap, longest)


def first_line(err: BaseException) -> str:
    """An exception as one short line (its type and the first line of its message)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


@torch.no_grad()
def check_staged_forward(staged, pad_token_id: int, vocab_size: int, causal: bool = True,
                         length: int | None = None) -> None:
    """The stages equal the model's own forward, or a one-line UsageError naming the difference.

    On a padded probe batch of `probe_length` tokens (past the sliding window and attention chunk): the model is
    a causal decoder (no token's output moves when a later token changes), the staged pass equals the model's
    own forward on every real token, and so does running it one block per pass, each restarting from the hidden
    state alone (as the activation cache does: about one more forward in all). With `causal=False`
    (--disable_causal_mask): the first token sees the last one, and a padded row equals the same row alone.
    Tolerance: 1e-5 of the output's largest entry (the same operations in the same order: 0 in fact).
    """
    name = type(staged.body).__name__
    length = length or probe_length(staged.config)
    generator = torch.Generator().manual_seed(0)
    device = next(staged.body.parameters()).device
    ids = torch.randint(0, vocab_size, (2, length), generator=generator)
    ids[ids == pad_token_id] = (pad_token_id + 1) % vocab_size
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, (2 * length) // 3:] = False
    ids[1, (2 * length) // 3:] = pad_token_id
    ids, mask = ids.to(device), mask.to(device)
    for gaps, flag, what in ((_staged_gaps, "--model", "cannot run as classify's stages"),
                             (_bidirectional_gaps, "--disable_causal_mask", "cannot run bidirectionally")):
        if gaps is _bidirectional_gaps and causal:
            continue
        try:
            found = gaps(staged, ids, mask)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - an architecture the stages cannot run: one line, not a traceback
            raise UsageError(f"{flag}: {name} {what} ({first_line(err)}); this architecture is not supported") from None
        for difference, gap in found.items():
            if not gap <= 1e-5:
                raise UsageError(f"{flag}: {name}: {difference} (relative difference {gap:.2g} on a padded "
                                 f"{length}-token probe); this architecture is not supported")


def _relative_gap(got: torch.Tensor, expected: torch.Tensor, where: torch.Tensor) -> float:
    scale = max(1.0, expected[where].abs().max().item())
    return (got.float() - expected.float())[where].abs().max().item() / scale


def _changed_token(staged, ids: torch.Tensor, row: int, position: int) -> torch.Tensor:
    changed = ids.clone()
    changed[row, position] = (changed[row, position] + 1) % staged.structure.token_embedding.weight.shape[0]
    return changed


def _staged_gaps(staged, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The check's differences, each named by what it means when it is not 0."""
    try:
        own = staged.body(input_ids=ids, attention_mask=mask.long(), **staged.call_options).last_hidden_state
    except Exception as err:  # noqa: BLE001 - transformers' own forward: nothing classify could stage
        raise UsageError(f"--model: {type(staged.body).__name__}'s own forward fails on a padded batch "
                         f"({first_line(err)}); this architecture is not supported") from None
    later = _changed_token(staged, ids, 0, -1)
    moved = staged.body(input_ids=later, attention_mask=mask.long(), **staged.call_options).last_hidden_state
    blocks = len(staged.structure.blocks)
    hidden = staged.embed(ids, mask)
    full = staged.run(hidden, 0, blocks, mask, True, True, input_ids=ids)
    for index in range(blocks):  # one block per pass: every boundary restarts from the hidden state alone
        hidden = staged.run(hidden, index, index + 1, mask, True, False, input_ids=ids)
    hopped = staged.run(hidden, blocks, blocks, mask, True, True, input_ids=ids)
    earlier = torch.zeros_like(mask)
    earlier[0, :-1] = True
    return {"it is not a causal decoder (a token's output changes with a later token)":
            _relative_gap(moved, own, earlier),
            "its forward pass is not its blocks run in order on one hidden state": _relative_gap(full, own, mask),
            "it carries state from block to block besides the hidden state (restarting at a block differs)":
            _relative_gap(hopped, own, mask)}


def _bidirectional_gaps(staged, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Under --disable_causal_mask: what padding changes (and a refusal where the first token cannot see the last)."""
    blocks = len(staged.structure.blocks)

    def final(token_ids, key_mask):
        return staged.run(staged.embed(token_ids, key_mask), 0, blocks, key_mask, False, True, input_ids=token_ids)

    both = final(ids, mask)
    real = int(mask[1].sum())
    alone = final(ids[1:, :real], mask[1:, :real])
    later = final(_changed_token(staged, ids, 0, -1), mask)
    first = torch.zeros_like(mask)
    first[0, 0] = True
    if _relative_gap(later, both, first) < 1e-6:
        raise UsageError(f"--disable_causal_mask: {type(staged.body).__name__}'s first token does not see the last "
                         "one with it (no attention to make bidirectional); drop the flag for this architecture")
    return {"padding changes the real tokens": _relative_gap(both[1:, :real], alone, mask[1:, :real])}
