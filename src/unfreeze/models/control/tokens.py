"""The pause-token ("control token") language model: any Hugging Face causal LM plus control tokens.

What is added to the base model, and nothing else:

* **Control tokens** (e.g. `<|pause|>`) become *special* tokens of the tokenizer, with ids right after the
  base vocabulary: `V, V+1, ...` where `V` is the number of rows of the LM head. Special tokens are never
  split or merged by the tokenizer, so removing them from a tokenized text leaves the text's own tokens.
  `pause_tokenization="reference"` registers them as the PauseToken reference did, with `lstrip` and
  `rstrip`: a control token then swallows the whitespace on both sides, so its neighbours become other
  tokens (`" clips"` -> `"clips"`); the default `"exact"` leaves the text's tokens as they are.
* **Control-token embeddings as a delta** (like peft's TrainableTokens): the base embedding matrix is not
  resized or touched; the new rows live in their own small parameter `control_embeddings` and are
  swapped in where the input holds a control id. An untrained model therefore embeds every normal token
  exactly like the base model. New rows are drawn from N(0, var(existing embedding matrix)).
* **A pause head**: `nn.Linear(hidden, n_control + 1)` on the last hidden state (optionally detached, so
  the head's loss never reaches the body); its last output means "use the LM head". PyTorch's default
  Linear initialisation, as in the reference code base.

Next-token log-probabilities over the extended vocabulary `V + n_control`:

    log p(tok)     = log p_lm(tok) + log p_head(use LM)      for a normal token
    log p(ctrl_i)  = log p_head(ctrl_i)                      for a control token

(the LM head has no rows for control tokens, which is the same as masking their LM logits to -inf).
Training loss = [LM NLL on positions whose label is a normal token + head NLL on every labelled
position] / number of labelled positions, which is exactly the NLL of the combined distribution.

Saved folder (`save_pretrained`): the base model in plain Hugging Face format (LoRA not merged) as a causal
LM of V + n tokens -- the control tokens' trained rows in its embedding matrix, zero rows in an untied LM head,
and the control tokens suppressed in generation_config.json, so plain transformers generates as this model
does with its pause head switched off -- the tokenizer (with the control tokens, and their strip flags),
`README.md` (the model card, when the run wrote one), `adapter/` (peft LoRA, if any),
`control_tokens.safetensors` and `control_tokens.json` (written last: it marks the folder as a complete
control-token model; it also records `pause_tokenization`). The folder is written beside its place and
renamed into it whole (`models/control_folder.py` writes and reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models.control.vocab import (  # noqa: F401 - registration lives there; importable from here too
    FILLER_TOKEN,
    PAUSE_TOKENIZATIONS,
    check_pause_tokenization,
    register_control_tokens,
    registered_tokenization,
)

IGNORE_INDEX = -100
MARKER_FILE = "control_tokens.json"
TENSORS_FILE = "control_tokens.safetensors"
ADAPTER_DIR = "adapter"
FORMAT = "unfreeze-control-tokens"


@dataclass
class ControlTokenOutput:
    """What `ControlTokenLM.forward` returns. Loss fields are None when no labels were given."""

    logprobs: torch.Tensor | None  # (B, T, V + n_control) next-token log-probs; None if not requested
    loss: torch.Tensor | None = None  # lm_loss + pause_loss
    lm_loss: torch.Tensor | None = None  # LM NLL of normal-token labels / labelled positions
    pause_loss: torch.Tensor | None = None  # head NLL of all labels / labelled positions
    past_key_values: Any = None
    # Per-example sums (B,), so that evaluation can weight every token equally across batches/processes.
    example_lm_nll: torch.Tensor | None = None
    example_pause_nll: torch.Tensor | None = None
    example_tokens: torch.Tensor | None = None
    # (B,) labels that are normal tokens: the reference divides the LM loss it *logs* by their number.
    example_normal_tokens: torch.Tensor | None = None


class ControlTokenLM(nn.Module):
    """A causal LM with control tokens, a delta embedding for them and a pause head.

    `base` is the Hugging Face model (a peft `PeftModel` once `add_lora` was called); `hf_model` is the
    Hugging Face model inside it either way.
    """

    def __init__(self, base: nn.Module, tokenizer: Any, control_tokens: Sequence[str] = (), detach_head: bool = True,
                 pause_tokenization: str = "exact"):
        super().__init__()
        self.base = base
        self.tokenizer = tokenizer
        self.detach_head = bool(detach_head)
        self.control_tokens = list(control_tokens)
        self.pause_tokenization = check_pause_tokenization(pause_tokenization)
        self._resume = None  # set by `resume_from`: what runs on cached states before the heads
        self._staged = None  # `staged_forward`, traced once
        lm_head = self.hf_model.get_output_embeddings()
        token_embeddings = self.hf_model.get_input_embeddings()
        if lm_head is None or token_embeddings is None:
            raise UsageError(f"{type(self.hf_model).__name__} has no LM head / token embeddings; need a causal LM")
        self.base_vocab_size = int(lm_head.weight.shape[0])
        self.control_token_ids = register_control_tokens(tokenizer, self.control_tokens, self.base_vocab_size,
                                                         self.pause_tokenization)
        n = len(self.control_tokens)
        if n == 0:
            self.control_embeddings = None
            self.pause_head = None
            return
        weight = token_embeddings.weight
        std = weight.detach().float().var().sqrt().item()
        rows = torch.randn(n, weight.shape[1], device=weight.device) * std
        self.control_embeddings = nn.Parameter(rows.to(weight.dtype))
        # The head reads the same vector as the LM head (the final, normalised hidden state).
        self.pause_head = nn.Linear(lm_head.weight.shape[1], n + 1, device=weight.device, dtype=lm_head.weight.dtype)

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_base(cls, model: nn.Module, tokenizer: Any, control_tokens: Sequence[str] = ("<|pause|>",),
                  detach_head: bool = True, pause_tokenization: str = "exact") -> "ControlTokenLM":
        """Wrap a loaded Hugging Face causal LM; adds the control tokens to `tokenizer` (in place)."""
        return cls(model, tokenizer, control_tokens, detach_head, pause_tokenization)

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, tokenizer: str | None = None, dtype: Any = None,
                        device: str | torch.device | None = None, merge_adapter: bool = False,
                        control_tokens: Sequence[str] = (), detach_head: bool = True,
                        pause_tokenization: str | None = None) -> "ControlTokenLM":
        """Load a saved control-token folder, or a plain HF model (folder or hub id) with `control_tokens`.

        A saved folder brings its own control tokens, head and adapter (`control_tokens` is ignored);
        `merge_adapter=True` folds a saved LoRA adapter into the weights (for further training).
        `pause_tokenization` None keeps a saved folder's own (plain models: "exact"); a value re-registers
        the control tokens that way (for training on with another tokenisation).
        """
        folder = Path(str(path_or_id)).expanduser()
        if folder.is_dir() and (folder / MARKER_FILE).exists():
            from unfreeze.models.control.folder import load_folder

            model = load_folder(cls, folder, dtype=dtype, merge_adapter=merge_adapter,
                                pause_tokenization=pause_tokenization)
        else:
            if folder.is_dir() and (folder / TENSORS_FILE).exists():
                raise UsageError(f"model folder {folder} is incomplete: {TENSORS_FILE} without {MARKER_FILE} "
                                 f"(an interrupted save?); save it again")
            from unfreeze.models.loading import ModelSource

            source = ModelSource(str(path_or_id), flag="model", tokenizer=tokenizer, tokenizer_flag="tokenizer")
            base = source.load("causal_lm", dtype=dtype)  # a hub id, a plain folder or a .gguf file
            tok = source.load_tokenizer()
            model = cls(base, tok, control_tokens, detach_head, pause_tokenization or "exact")
        if device is not None:
            model.to(device)
        return model.eval()

    # --- pieces -----------------------------------------------------------------------------------------

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face model (inside the peft wrapper when LoRA is on)."""
        get_base = getattr(self.base, "get_base_model", None)
        return get_base() if callable(get_base) and is_peft_model(self.base) else self.base

    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def vocab_size(self) -> int:
        """Size of the extended vocabulary: base vocabulary + control tokens."""
        return self.base_vocab_size + len(self.control_tokens)

    def staged_forward(self):
        """The LM's decoder stack as stages (`unfreeze.models.staged`), traced once (a 4-token pass) and kept: the
        blocks the words of `trainable_layers` name, and the boundaries the frozen-prefix cache stores."""
        from unfreeze.models.staged import StagedForward

        body = self.hf_model.base_model
        if self._staged is None or self._staged.body is not body:
            self._staged = StagedForward(body)
        return self._staged

    @property
    def has_lora(self) -> bool:
        return is_peft_model(self.base)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; control ids take their row from `control_embeddings` (the delta)."""
        V = self.base_vocab_size
        is_control = input_ids >= V
        embeds = self.hf_model.get_input_embeddings()(input_ids.masked_fill(is_control, 0))
        if self.control_embeddings is None:
            return embeds
        # Every position looks up a control row (clamped), so the parameter is always part of the graph
        # (DDP sees it used); `where` keeps only the rows of real control ids.
        control = F.embedding((input_ids - V).clamp(0, len(self.control_tokens) - 1), self.control_embeddings)
        return torch.where(is_control.unsqueeze(-1), control.to(embeds.dtype), embeds)

    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                 target_modules: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> None:
        """Wrap the base model with a peft LoRA adapter (targets default to q_proj,v_proj or GPT-2's c_attn); with
        `layers`, only in those blocks (0-based): peft's `layers_to_transform`, the blocks' list named as the
        model's structure finds it, and the adapted layers checked to lie exactly in those blocks."""
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        from unfreeze.models.lora import check_rank

        if self.has_lora:
            raise UsageError("the model already has a LoRA adapter; merge it first (merge_lora)")
        targets = list(target_modules) if target_modules else default_lora_targets(self.hf_model)
        leaf_types = {type(m) for name, m in self.hf_model.named_modules() if name.rsplit(".", 1)[-1] in targets}
        check_rank({n: m for n, m in self.hf_model.named_modules() if n.rsplit(".", 1)[-1] in targets}, r, "lora_rank")
        where = _block_layers(self, layers) if layers is not None else {}
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                            task_type="CAUSAL_LM", fan_in_fan_out=Conv1D in leaf_types,  # GPT-2 stores W transposed
                            **where)
        try:
            self.base = get_peft_model(self.base, config)
        except ValueError as err:
            raise UsageError(f"lora_target_modules {','.join(targets)}: {str(err).splitlines()[0]}") from None
        if layers is not None:
            _check_adapted_blocks(self, layers, targets)

    def merge_lora(self) -> None:
        """Fold the LoRA update into the base weights and drop the adapter."""
        if self.has_lora:
            self.base = self.base.merge_and_unload()

    def resume_from(self, boundary: int | None, prefix=None) -> None:
        """`cached_hidden` holds the states at block boundary `boundary` (`unfreeze.cache.prefix`): forward runs
        the rest of the LM from there (`prefix`, the LM's staged forward), then the heads. None: they are the final
        hidden states (after the final norm), and only the heads run."""
        if boundary is None:
            self._resume = None
        else:
            last = prefix.num_blocks + 2
            self._resume = lambda hidden, mask: prefix.advance(hidden, (None, mask.bool()), boundary, last)

    # --- forward ----------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, past_key_values: Any = None, use_cache: bool = False,
                position_ids: torch.Tensor | None = None, *, return_logprobs: bool = True,
                cached_hidden: torch.Tensor | None = None, logits_to_keep: int = 0) -> ControlTokenOutput:
        """Combined next-token log-probs (and the losses when `labels` are given).

        `return_logprobs=False` skips building the (B, T, V + n) tensor: training needs only the losses.
        `cached_hidden`: the states of these inputs at a block boundary, computed once by `unfreeze.cache.sft_prefix`:
        only what follows it runs (`resume_from`; after the final norm: only the LM head and the pause head).
        `logits_to_keep=k > 0`: only the last k positions' outputs (generation needs just the last one).
        """
        n = len(self.control_tokens)
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep is for generation; the losses need every position")
        if cached_hidden is not None:
            hidden = cached_hidden
            if self._resume is not None:  # the blocks after the cached boundary, and the final norm
                hidden = self._resume(hidden.to(self.hf_model.get_input_embeddings().weight.dtype), attention_mask)
            hidden = hidden.to(self.hf_model.get_output_embeddings().weight.dtype)
            out = None
            logits = self.hf_model.get_output_embeddings()(hidden).float()
        else:
            out = self.base(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask,
                            past_key_values=past_key_values, use_cache=use_cache, position_ids=position_ids,
                            output_hidden_states=n > 0, return_dict=True, logits_to_keep=logits_to_keep)
            logits = out.logits.float()
            # After the final norm: what the LM head reads (the same positions as the logits).
            hidden = out.hidden_states[-1][:, -logits.shape[1]:] if n else None
        log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)  # log p_lm = logits - this
        head_logprobs = None
        if n:
            if self.detach_head:
                hidden = hidden.detach()
            head_logprobs = torch.log_softmax(self.pause_head(hidden).float(), dim=-1)
        logprobs = None
        if return_logprobs:
            logprobs = logits - log_normaliser
            if n:
                logprobs = torch.cat([logprobs.add_(head_logprobs[..., -1:]), head_logprobs[..., :-1]], dim=-1)
        past = out.past_key_values if use_cache and out is not None else None
        result = ControlTokenOutput(logprobs=logprobs, past_key_values=past)
        if labels is not None:
            self._add_losses(result, logits, log_normaliser, head_logprobs, labels)
        return result

    @torch.no_grad()
    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden state (after the final norm): what both heads read."""
        out = self.base(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask,
                        output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]

    def _add_losses(self, result: ControlTokenOutput, logits: torch.Tensor, log_normaliser: torch.Tensor,
                    head_logprobs: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Labels follow the Hugging Face convention: aligned with input_ids, shifted here."""
        V, n = self.base_vocab_size, len(self.control_tokens)
        target = labels[:, 1:]
        active = target != IGNORE_INDEX
        is_control = active & (target >= V)
        normal = active & ~is_control
        lm_tok = logits[:, :-1].gather(-1, target.clamp(0, V - 1).unsqueeze(-1)) - log_normaliser[:, :-1]
        lm_tok = lm_tok.squeeze(-1)
        lm_nll = torch.where(normal, -lm_tok, torch.zeros_like(lm_tok)).sum(1)
        if head_logprobs is None:
            pause_nll = torch.zeros_like(lm_nll)
        else:
            head_target = torch.where(is_control, target - V, torch.full_like(target, n)).clamp(0, n)
            head_tok = head_logprobs[:, :-1].gather(-1, head_target.unsqueeze(-1)).squeeze(-1)
            pause_nll = torch.where(active, -head_tok, torch.zeros_like(head_tok)).sum(1)
        tokens = active.sum(1)
        denominator = tokens.sum().clamp(min=1)
        result.lm_loss = lm_nll.sum() / denominator
        result.pause_loss = pause_nll.sum() / denominator
        result.loss = result.lm_loss + result.pause_loss
        result.example_lm_nll, result.example_pause_nll, result.example_tokens = lm_nll, pause_nll, tokens
        result.example_normal_tokens = normal.sum(1)

    # --- saving -----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write the folder described in the module docstring (with `card` as its README.md) into a hidden
        staging folder beside it, then swap it in whole: a save that is killed leaves the previous folder (or
        none), never a half-written one that a loader would read as a model without its control tokens."""
        from unfreeze.files import staged_folder
        from unfreeze.models.control.folder import write_folder

        folder = Path(directory)
        with staged_folder(folder) as staging:
            write_folder(self, staging, card)
        return folder

# --- helpers (module level so the sft recipe and tests can use them) ------------------------------------


def is_peft_model(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, PeftModel)


def _blocks_and_name(model: ControlTokenLM) -> tuple[nn.ModuleList, str]:
    blocks = model.staged_forward().structure.blocks
    return blocks, next(name for name, module in model.hf_model.named_modules() if module is blocks)


def _block_layers(model: ControlTokenLM, layers: Sequence[int]) -> dict:
    """peft's keys for an adapter on `layers` only: the indices, and the last name of the blocks' list (`h`,
    `layers`), which peft matches as `<pattern>.<index>.` in a layer's name."""
    _, name = _blocks_and_name(model)
    return {"layers_to_transform": sorted(layers), "layers_pattern": name.rsplit(".", 1)[-1]}


def _check_adapted_blocks(model: ControlTokenLM, layers: Sequence[int], targets: Sequence[str]) -> None:
    """The adapter sits in exactly the chosen blocks (peft matched its pattern as intended), read from structure."""
    from unfreeze.models.lora import lora_modules

    blocks, _ = _blocks_and_name(model)
    adapted = {i for i, block in enumerate(blocks) if lora_modules(block)}
    outside = [m for m in lora_modules(model.hf_model) if not any(m is x for i in layers for x in blocks[i].modules())]
    if adapted != set(layers) or outside:
        raise UsageError(f"lora on blocks {','.join(map(str, sorted(layers)))}: peft adapted blocks "
                         f"{sorted(adapted)} with targets {','.join(targets)}; set lora_target_modules to layers "
                         "inside every block")


def default_lora_targets(hf_model: nn.Module) -> list[str]:
    """Mistral/Llama-style attention: q_proj, v_proj; GPT-2: c_attn (its fused q,k,v projection)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in hf_model.named_modules()}
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaves:
        return ["c_attn"]
    raise UsageError(f"no default LoRA targets for {type(hf_model).__name__}; set lora_target_modules")
