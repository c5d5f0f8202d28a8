"""Dropout, in one place: every recipe sets and inspects it through this one list of settings.

Active dropout makes a frozen part of the network random, so it decides whether a cache is exact.
Models keep their rates in two forms: `nn.Dropout` modules, and plain float rates that attention
implementations read (on the config and on attention modules), under the names listed below.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Config keys and module attributes that hold a dropout rate, across the model families we load
# (GPT-2: *_pdrop; Llama/Mistral: attention_dropout; BERT-likes: *_prob; others: dropout, ...).
DROPOUT_ATTRIBUTES = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout",
                      "hidden_dropout", "dropout", "activation_dropout", "hidden_dropout_prob",
                      "attention_probs_dropout_prob")


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def set_config_dropout(config: Any, p: float) -> None:
    """Every dropout rate of a model config to `p` (before the model is built, so every layer gets it)."""
    for name in DROPOUT_ATTRIBUTES:
        if _is_rate(getattr(config, name, None)):
            setattr(config, name, p)


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of a built model to `p`: nn.Dropout modules, float rates on modules, and its config."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name in DROPOUT_ATTRIBUTES:
            if _is_rate(getattr(module, name, None)):
                setattr(module, name, p)
    config = getattr(model, "config", None)
    if config is not None:
        set_config_dropout(config, p)


def active_dropout(module: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> list[str]:
    """Names of the dropouts inside `module` (outside the sub-modules `exclude`) that are active in training."""
    skipped = {id(m) for part in exclude for m in part.modules()}
    found = []
    for name, sub in module.named_modules():
        if id(sub) in skipped:
            continue
        if isinstance(sub, nn.Dropout):
            if sub.p > 0:
                found.append(name or "dropout")
            continue
        for attribute in DROPOUT_ATTRIBUTES:
            value = getattr(sub, attribute, None)
            if _is_rate(value) and value > 0:
                found.append(f"{name}.{attribute}" if name else attribute)
    return found
