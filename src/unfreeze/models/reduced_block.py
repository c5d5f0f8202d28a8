"""The last transformer block computed only where the classification loss reads it.

With `last`, `first` or `flexible` pooling the head reads the final hidden state at ONE position per
example. The last block still needs keys and values at every position (its attention looks back over
them), but its query, attention output, output projection, MLP and norms only at that position: on a
GPT-2 block that is the fused qkv projection (3 d^2 per token) instead of the whole block (12 d^2 per
token, plus the attention itself). Causal attention of the one query at position p covers keys <= p,
and under a padding mask only the real ones: exactly the row p of the full block's attention.

Supported blocks are recognised by type (GPT-2's block; the Llama family's decoder layer: Llama,
Mistral, Qwen2), each reduced with its own submodules, so LoRA-wrapped projections still run through
their wrappers. The block's arguments are the ones the model's own forward passes it
(`StagedForward.run_last_block_as`): the query's row of the model's mask (SDPA's boolean or eager's additive
one; None is the plain causal mask) and the model's rotary angles. Anything else (or active dropout, or
a sliding-window last layer) returns None from `reducer_for`, and the caller runs the full block: same
function, no saving.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unfreeze.models.dropout import active_dropout

# (hidden (batch, length, width), positions (batch,), the block's arguments by name) -> (batch, width)
Reducer = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def _query_mask(mask: torch.Tensor | None, positions: torch.Tensor, length: int) -> torch.Tensor:
    """The row of the model's (batch or 1, 1, queries, keys) mask at each example's query: (batch, 1, 1, keys)."""
    if mask is None:  # the model left it to SDPA's causal kernel: keys at or before the query
        allowed = torch.arange(length, device=positions.device)[None] <= positions[:, None]
        return allowed[:, None, None, :]
    rows = mask.expand(positions.shape[0], *mask.shape[1:])
    return rows[torch.arange(positions.shape[0], device=positions.device), :, positions][:, :, None, :]


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor,
            mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """One query per example, (batch, heads, 1, dim), over the keys the model's mask allows it."""
    allowed = _query_mask(mask, positions, key.shape[2])
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each key/value head serves several queries
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)


def _at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(batch, length, ...) -> (batch, ...) at one position per row."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]


def _gpt2_reducer(block: nn.Module) -> Reducer | None:
    attn = block.attn
    if attn.is_cross_attention or getattr(attn.config, "add_cross_attention", False):
        return None

    def run(hidden, positions, arguments):
        batch, length, width = hidden.shape
        heads = attn.num_heads
        # c_attn runs on every position (keys and values; it may be LoRA-wrapped, so it is called whole).
        query, key, value = attn.c_attn(block.ln_1(hidden)).split(attn.split_size, dim=2)
        key = key.view(batch, length, heads, -1).transpose(1, 2)
        value = value.view(batch, length, heads, -1).transpose(1, 2)
        query = _at(query, positions).view(batch, heads, 1, -1)
        mask = arguments.get("attention_mask")
        mixed = _attend(query, key, value, positions, mask, attn.scaling).reshape(batch, width)
        residual = _at(hidden, positions) + attn.c_proj(mixed)
        return residual + block.mlp(block.ln_2(residual))

    return run


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _llama_reducer(block: nn.Module) -> Reducer | None:
    attn = block.self_attn
    if any(hasattr(attn, name) for name in ("q_norm", "k_norm", "sinks")) or getattr(attn, "sliding_window", None):
        return None  # Qwen3/OLMo-style query/key norms, attention sinks, windows: not this computation

    def run(hidden, positions, arguments):
        batch, length, _ = hidden.shape
        cos, sin = arguments["position_embeddings"]  # (batch or 1, length, head_dim)
        cos, sin = cos.expand(batch, *cos.shape[1:]), sin.expand(batch, *sin.shape[1:])
        normed = block.input_layernorm(hidden)
        key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        value = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        key = key * cos[:, None] + _rotate_half(key) * sin[:, None]
        query = attn.q_proj(_at(normed, positions)).view(batch, -1, 1, attn.head_dim)
        angle_cos, angle_sin = _at(cos, positions)[:, None, None], _at(sin, positions)[:, None, None]
        query = query * angle_cos + _rotate_half(query) * angle_sin
        mixed = _attend(query, key, value, positions, arguments.get("attention_mask"), attn.scaling).reshape(batch, -1)
        residual = _at(hidden, positions) + attn.o_proj(mixed)
        return residual + block.mlp(block.post_attention_layernorm(residual))

    return run


def _block_types() -> dict[type, Callable[[nn.Module], Reducer | None]]:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return {GPT2Block: _gpt2_reducer, LlamaDecoderLayer: _llama_reducer, MistralDecoderLayer: _llama_reducer,
            Qwen2DecoderLayer: _llama_reducer}


def reducer_for(block: nn.Module, mask_kind: str) -> Reducer | None:
    """The one-position computation of `block`, or None where only the full block is exact."""
    if mask_kind != "full_attention" or (block.training and active_dropout(block)):
        return None  # dropout (modules or rates such as Llama's attention_dropout) would act per position
    make = _block_types().get(type(block))
    return make(block) if make is not None else None
