"""The structure of a decoder-only base model, read from its modules, and its forward pass as stages.

`unfreeze classify` runs a Hugging Face base model (`AutoModel`: GPT2Model, LlamaModel, Qwen2Model,
GPTNeoXModel, MistralModel, PhiModel, GemmaModel, ...) as explicit stages so that the activation cache
can start the forward pass at any block. What a stage is comes from the modules, never from parameter
names:

* token embedding: `get_input_embeddings()` (Gemma's scaling by sqrt(width) lives inside that module in
  transformers 5, so it comes along);
* absolute position embedding: another `nn.Embedding` child registered before the blocks (GPT-2's wpe);
* blocks: the `nn.ModuleList` child holding `num_hidden_layers` modules;
* final norm: the first child with parameters registered after the blocks;
* rotary embedding: a child holding rotary frequencies (`inv_freq`, the contract of transformers'
  rotary modules), called once per forward as `rotary(hidden, position_ids) -> (cos, sin)`.

How each architecture's forward calls its blocks in transformers 5 is reproduced here: the mask of each
layer's attention type (`config.layer_types`: full or sliding window; else a sliding window when
`config.sliding_window` is set, as Mistral and Phi-3 do), `position_embeddings=(cos, sin)` and
`position_ids` for rotary models, and a tensor (or a tuple whose first item is the hidden state) back.
`check_staged_forward` compares the staged pass with the model's own forward on a probe batch, so an
architecture whose forward does something else is refused instead of silently computing another function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unfreeze.errors import UsageError


@dataclass
class Structure:
    """The modules of a base model's forward pass, in order."""

    token_embedding: nn.Module
    position_embedding: nn.Module | None  # absolute positions (GPT-2); None for rotary models
    blocks: nn.ModuleList
    final_norm: nn.Module
    rotary: nn.Module | None
    extra_embedding_modules: list[nn.Module]  # dropout etc. applied to the embeddings (p=0 here)


def _text_config(body: nn.Module):
    config = body.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def read_structure(body: nn.Module) -> Structure:
    """The stages of `body`, or one UsageError naming what was looked for and not found."""
    name = type(body).__name__
    config = _text_config(body)
    layers = getattr(config, "num_hidden_layers", None)
    try:
        token_embedding = body.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        token_embedding = None
    children = list(body.named_children())
    index = next((i for i, (_, child) in enumerate(children)
                  if isinstance(child, nn.ModuleList) and len(child) == layers), None)
    after = [] if index is None else [child for _, child in children[index + 1:]
                                     if any(True for _ in child.parameters())]
    missing = [what for what, found in (("a token embedding (get_input_embeddings())", token_embedding),
                                        (f"a ModuleList of num_hidden_layers={layers} blocks", index),
                                        ("a final norm with parameters registered after the blocks", after))
               if found is None or (isinstance(found, list) and not found)]
    if missing:
        raise UsageError(f"--model: cannot read the structure of {name} (missing {'; '.join(missing)}); "
                         "classify supports decoder-only models such as GPT-2, Llama, Qwen2, GPT-NeoX, Mistral")
    before = [child for _, child in children[:index] if child is not token_embedding]
    positions = [c for c in before if isinstance(c, nn.Embedding)]
    rotary = [c for _, c in children if isinstance(getattr(c, "inv_freq", None), torch.Tensor)]
    return Structure(token_embedding, positions[0] if positions else None, children[index][1], after[0],
                     rotary[0] if rotary else None, [c for c in before if isinstance(c, nn.Dropout)])


def _layer_mask_kinds(config, count: int) -> list[str]:
    """Which mask each block's attention uses: 'full_attention' or 'sliding_attention'."""
    kinds = getattr(config, "layer_types", None)
    if kinds:
        unknown = sorted(set(kinds) - {"full_attention", "sliding_attention"})
        if unknown:
            raise UsageError(f"--model: attention type(s) {', '.join(unknown)} are not supported by classify's staged "
                             "forward (full and sliding-window attention are)")
        return list(kinds[:count])
    sliding = getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * count


class StagedForward:
    """A base model's forward pass split at block boundaries: `embed`, then `run` over a block range.

    `key_mask` (batch, length), True at real tokens, is None for the reference's GPT-2 semantics (no
    padding mask). Masks and rotary embeddings are recomputed from it on every call: cheap and exact, so a
    cache only needs the hidden states at its boundary.
    """

    def __init__(self, body: nn.Module, structure: Structure):
        self.body, self.structure = body, structure
        self.config = _text_config(body)
        self.mask_kinds = _layer_mask_kinds(self.config, len(structure.blocks))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.structure.token_embedding(input_ids)
        if self.structure.position_embedding is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            hidden = hidden + self.structure.position_embedding(positions)[None]
        for module in self.structure.extra_embedding_modules:
            hidden = module(hidden)
        return hidden

    def block_inputs(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, causal: bool) -> dict:
        """The keyword arguments every block gets, per mask kind: masks, positions, rotary embeddings."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        batch, length = hidden.shape[:2]
        position_ids = torch.arange(length, device=hidden.device)[None].expand(batch, -1)
        extra = {}
        if self.structure.rotary is not None:
            extra = {"position_embeddings": self.structure.rotary(hidden, position_ids=position_ids),
                     "position_ids": position_ids}
        if not causal:
            # SDPA falls back to its causal kernel when the mask is None: every token attending to every
            # (real) token needs an explicit mask.
            keys = key_mask if key_mask is not None else torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
            full = keys[:, None, None, :].expand(batch, 1, length, length)
            return {kind: {"attention_mask": full, **extra} for kind in set(self.mask_kinds)}
        if key_mask is None:  # GPT-2 reference semantics: SDPA's causal kernel, no padding mask
            return {kind: {"attention_mask": None, **extra} for kind in set(self.mask_kinds)}
        makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        return {kind: {"attention_mask": makers[kind](config=self.config, inputs_embeds=hidden,
                                                      attention_mask=key_mask.long(), past_key_values=None,
                                                      position_ids=position_ids), **extra}
                for kind in set(self.mask_kinds)}

    def run(self, hidden: torch.Tensor, first: int, stop: int, key_mask: torch.Tensor | None,
            causal: bool, final_norm: bool) -> torch.Tensor:
        """Blocks `first .. stop-1` (0-based), then the final norm if asked."""
        if first < stop:
            inputs = self.block_inputs(hidden, key_mask, causal)
            for index in range(first, stop):
                out = self.structure.blocks[index](hidden, **inputs[self.mask_kinds[index]])
                hidden = out[0] if isinstance(out, tuple) else out
        return self.structure.final_norm(hidden) if final_norm else hidden


@torch.no_grad()
def check_staged_forward(staged: StagedForward, pad_token_id: int, vocab_size: int, atol: float = 1e-4) -> None:
    """The staged pass equals the model's own forward on a padded probe batch, or a UsageError."""
    generator = torch.Generator().manual_seed(0)
    device = next(staged.body.parameters()).device
    ids = torch.randint(0, vocab_size, (2, 8), generator=generator).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 5:] = False
    ids[1, 5:] = pad_token_id
    expected = staged.body(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    got = staged.run(staged.embed(ids), 0, len(staged.structure.blocks), mask, True, True)
    gap = (got - expected)[mask].abs().max().item()
    if not gap <= atol:
        raise UsageError(f"--model: {type(staged.body).__name__}'s forward pass is not the stages classify runs "
                         f"(embeddings, blocks, final norm; max difference {gap:.2g}); this architecture is not supported")
