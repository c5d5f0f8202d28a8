"""A block's attention and its feed-forward (MLP), read from structure: the words `attention:` and `mlp:`.

Names differ across architectures (GPT-2 `attn`/`mlp`, Llama and Qwen2 `self_attn`/`mlp`, GPT-NeoX
`attention`/`mlp`, Falcon and BLOOM `self_attention`, OPT `self_attn` with the feed-forward as two bare
linear layers `fc1`/`fc2`), so neither is found by name:

* **attention**: the block's child that is an instance of the class transformers itself records attention
  weights from (`_can_record_outputs["attentions"]` of the base model, the hook `output_attentions` uses:
  LlamaAttention, GPT2Attention, GPTNeoXAttention, ...). Models that declare none (older code such as
  Falcon, BLOOM, GPT-Neo) fall back to the child whose forward takes both an attention mask and what only
  attention reads besides it: a past key/value cache (`layer_past`), ALiBi slopes (`alibi`) or rotary
  angles (`position_embeddings`). A state-space mixer (Mamba) or a recurrent block takes a mask too, but is
  not recorded as attention and takes none of those, so a block of one has no attention: refused, in one line.
* **MLP**: in a block whose attention was read, the children with parameters that are neither the attention
  nor a normalisation layer (a module whose parameters are all per-feature vectors, or one of torch's norm
  types): one child (GPT-2's `mlp`, a mixture of experts as a whole) or several plain linear layers (OPT's
  `fc1`, `fc2`); anything else (Falcon-H1: a Mamba mixer beside the feed-forward) is refused, in one line.
"""

from __future__ import annotations

import inspect

from torch import nn
from transformers.pytorch_utils import Conv1D

from unfreeze.errors import UsageError

TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
_ATTENTION_ONLY_INPUTS = ("layer_past", "alibi", "position_embeddings")


def recorded_attention(body: nn.Module) -> tuple[type, ...]:
    """The attention classes transformers records attention weights from, for this base model (or none)."""
    recorded = getattr(body, "_can_record_outputs", None) or {}
    target = recorded.get("attentions")
    targets = target if isinstance(target, (list, tuple)) else [target]
    return tuple(getattr(t, "target_class", t) for t in targets if isinstance(getattr(t, "target_class", t), type))


def _takes_attention_inputs(module: nn.Module) -> bool:
    try:
        names = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "attention_mask" in names and any(name in names for name in _ATTENTION_ONLY_INPUTS)


def is_norm(module: nn.Module, norm_types: tuple[type, ...] = ()) -> bool:
    """A normalisation layer: torch's types, `norm_types`, or parameters that are all per-feature vectors."""
    params = list(module.parameters())
    return isinstance(module, TORCH_NORMS + norm_types) or bool(params) and all(p.dim() == 1 for p in params)


def _linear(module: nn.Module) -> bool:
    """A linear layer, also when LoRA wraps it (peft's and unfreeze's wrappers keep it as `base_layer`)."""
    return isinstance(getattr(module, "base_layer", module), (nn.Linear, Conv1D))


def attention_of(block: nn.Module, recorded: tuple[type, ...]) -> nn.Module | None:
    """The block's attention (see the module docstring), or None where it cannot be told."""
    children = list(block.children())
    found = [c for c in children if isinstance(c, recorded)] if recorded else [
        c for c in children if _takes_attention_inputs(c)]
    return found[0] if len(found) == 1 else None


def mlp_of(block: nn.Module, attention: nn.Module | None, norm_types: tuple[type, ...] = ()) -> list[nn.Module] | None:
    """The block's feed-forward modules (see the module docstring), or None where they cannot be told (a block
    whose attention cannot be read: what is left might be a state-space mixer, not a feed-forward)."""
    if attention is None:
        return None
    rest = [c for c in block.children() if c is not attention and any(True for _ in c.parameters())
            and not is_norm(c, norm_types)]
    if len(rest) == 1 or (rest and all(_linear(c) for c in rest)):
        return rest
    return None


def block_part(body: nn.Module, blocks: nn.ModuleList, index: int, part: str, flag: str, term: str,
               norm_types: tuple[type, ...] = ()) -> list[nn.Module]:
    """The modules of `part` ("attention" or "mlp") of block `index`; one UsageError line where they cannot be read."""
    block = blocks[index]
    attention = attention_of(block, recorded_attention(body))
    name = f"block {index} of {type(body).__name__} ({type(block).__name__})"
    if part == "attention":
        if attention is None:
            raise UsageError(f"{flag} {term}: {name} has no attention module unfreeze can read (transformers "
                             "records none for it, or several); choose whole blocks instead")
        return [attention]
    mlp = mlp_of(block, attention, norm_types)
    if mlp is None:
        kids = ", ".join(n for n, c in block.named_children() if c is not attention and not is_norm(c, norm_types)
                         and any(True for _ in c.parameters())) or "nothing"
        where = "" if attention is not None else " (its attention cannot be read)"
        raise UsageError(f"{flag} {term}: cannot tell the feed-forward of {name} among {kids}{where}; choose whole "
                         "blocks instead")
    return mlp
