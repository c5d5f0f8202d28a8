"""A model's configuration: GPT-2's size names, `--model_config` overrides and their checks, and the
settings the recipes change before a model is built (dropout, the fused GELU).

Everything here works on a `PretrainedConfig` alone: nothing is allocated, so every check runs before
any work starts.
"""

from __future__ import annotations

import json
from typing import Any

from unfreeze.errors import UsageError
from unfreeze.models.dropout import set_config_dropout
from unfreeze.resources import free_memory_bytes

# The reference script's size names -> Hugging Face hub ids and architectures (GPT-2 paper, Table 2).
GPT2_SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "gpt2-small (124M)": ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12}),
    "gpt2-medium (355M)": ("gpt2-medium", {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    "gpt2-large (774M)": ("gpt2-large", {"n_embd": 1280, "n_layer": 36, "n_head": 20}),
    "gpt2-xl (1558M)": ("gpt2-xl", {"n_embd": 1600, "n_layer": 48, "n_head": 25}),
}
GPT2_HUB_ARCH = {hub_id: arch for hub_id, arch in GPT2_SIZES.values()}


def resolve_model_id(model_size: str) -> str:
    """'gpt2-small (124M)' -> 'gpt2'; a hub id or a local folder is returned unchanged."""
    if model_size in GPT2_SIZES:
        return GPT2_SIZES[model_size][0]
    return model_size


def parse_model_config(text: str | dict | None, flag: str = "--model_config") -> dict[str, Any]:
    """JSON architecture overrides, e.g. '{"n_layer":2,"n_embd":128,"n_head":4}'."""
    if text in (None, "", "null", "None"):
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not valid JSON ({err.msg}); example: '{{\"n_layer\":2,\"n_embd\":128}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object such as '{{\"n_layer\":2}}', got {text!r}")
    return value


def apply_overrides(config, overrides: dict[str, Any], overrides_flag: str = "--model_config") -> None:
    """Set each override on `config`; an unknown key or a value the config rejects is a UsageError."""
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UsageError(f"{overrides_flag} key {key!r} is not a field of {type(config).__name__}")
        try:
            setattr(config, key, value)
        except Exception as err:  # noqa: BLE001 - transformers 5 validates field types on assignment
            raise UsageError(f"{overrides_flag} {key}={value!r}: {str(err).splitlines()[-1].strip()[:160]}") from None


ARCHITECTURE_SIZES = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "num_hidden_layers",
                      "num_attention_heads", "hidden_size", "max_position_embeddings")


def check_architecture(config, flag: str = "--model_config") -> None:
    """Sizes are positive integers and the width splits evenly into heads (else the model cannot be built)."""
    for key in ARCHITECTURE_SIZES:
        value = getattr(config, key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag}: {key} must be a positive integer (got {value!r})")
    width = getattr(config, "n_embd", None) or getattr(config, "hidden_size", None)
    heads = getattr(config, "n_head", None) or getattr(config, "num_attention_heads", None)
    if width and heads and width % heads and getattr(config, "head_dim", None) is None:
        raise UsageError(f"{flag}: the width n_embd={width} is not divisible by n_head={heads}; "
                         f"use e.g. n_embd={heads * max(1, round(width / heads))}")


def gpt2_parameter_count(config) -> int:
    """Parameters of a GPT-2 body: embeddings, and per block attention (4 d^2 + 4 d), MLP (8 d^2 + 5 d)
    and two LayerNorms (4 d), plus the final LayerNorm; the MLP width is 4 d unless n_inner says otherwise."""
    d, inner = config.n_embd, getattr(config, "n_inner", None) or 4 * config.n_embd
    block = (4 * d * d + 4 * d) + (2 * d * inner + inner + d) + 4 * d
    return (config.vocab_size + config.n_positions) * d + config.n_layer * block + 2 * d


def check_fits_in_memory(config, flag: str = "--model_config") -> None:
    """A GPT-2 whose fp32 weights alone exceed the free memory is refused before it is allocated."""
    if getattr(config, "model_type", None) != "gpt2":
        return
    needed, free = 4 * gpt2_parameter_count(config), free_memory_bytes()
    if free is not None and needed > free:
        raise UsageError(f"{flag}: this model has {needed // 4:,} parameters, {needed / 2**30:.1f} GiB in fp32, more "
                         f"than the {free / 2**30:.1f} GiB of free memory; choose a smaller n_embd/n_layer")


def without_dropout(config) -> None:
    """The reference trains with dropout 0.0; that also makes frozen layers deterministic (caching)."""
    set_config_dropout(config, 0.0)


def is_gpt2(config) -> bool:
    """GPT-2 keeps the reference's padding semantics (pad 50256, no attention mask) in classify."""
    return getattr(config, "model_type", "gpt2") == "gpt2"


UNBOUNDED_CONTEXT = 2048  # models whose config sets no length (BLOOM's ALiBi): BLOOM's training length


def context_size(config) -> int:
    """The longest input the model takes (GPT-2's n_positions, max_position_embeddings, MPT's max_seq_len)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("n_positions", "max_position_embeddings", "max_seq_len"):
        if isinstance(getattr(text, key, None), int) and getattr(text, key) > 0:
            return getattr(text, key)
    return UNBOUNDED_CONTEXT


# transformers' "gelu_new" (GPT-2's activation) writes the tanh approximation of GELU as seven elementwise
# operations, each a pass over the MLP's 4x-wide activations forward and more backward; "gelu_pytorch_tanh" is
# the same formula as one fused kernel (equal up to float rounding). The composed form took ~40% of a whole
# `--trainable_layers all` run on the 2-core CPU (benchmarks/profile_all.py).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fused_activation(config) -> None:
    """Swap a config's composed activation for its fused equivalent (in place), where one exists."""
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) in FUSED_ACTIVATIONS:
            setattr(config, key, FUSED_ACTIVATIONS[getattr(config, key)])


def enable_activation_checkpointing(model) -> None:
    """Blocks recompute their activations in backward instead of keeping them (transformers' own switch; its
    newer name where this transformers has it, the older one otherwise)."""
    kwargs = {"use_reentrant": False}  # the reentrant variant needs an input that requires grad
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
