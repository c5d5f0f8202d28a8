"""What trains, decided in one place from module structure (never from parameter-name substrings).

A preset names modules; `set_trainable` freezes everything and unfreezes exactly those modules'
parameters; `trainable_summary` reports the tensors and counts that every run prints and records.
"""

from __future__ import annotations

from torch import nn

from unfreeze.models import lora as lora_lib
from unfreeze.models.classifier import GPT2Classifier


def set_trainable(model: nn.Module, modules: list[nn.Module]) -> None:
    for param in model.parameters():
        param.requires_grad = False
    for module in modules:
        for param in module.parameters():
            param.requires_grad = True


def classifier_preset(model: GPT2Classifier, preset: str, lora_rank: int = 8, lora_alpha: float = 8,
                      seed: int | None = None, lora_layout: str = "reference") -> None:
    """Apply one of the reference's `--trainable_layers` presets to `model` in place.

    last_layer: the new head. last_block: the last transformer block, the final LayerNorm and the
    head. last_two_blocks: the last two blocks, the final LayerNorm and the head. all: everything.
    lora / lora_alternative: LoRA on every linear layer (head included) — and, as in the reference,
    the head's own weight and bias also train, because the reference creates the head after freezing
    the model and never freezes it.
    """
    blocks = list(model.body.h)
    if preset == "last_layer":
        set_trainable(model, [model.head])
    elif preset == "last_block":
        set_trainable(model, [blocks[-1], model.body.ln_f, model.head])
    elif preset == "last_two_blocks":
        set_trainable(model, [*blocks[-2:], model.body.ln_f, model.head])
    elif preset == "all":
        set_trainable(model, [model])
    elif preset in ("lora", "lora_alternative"):
        add = lora_lib.add_lora if preset == "lora" else lora_lib.add_merged_lora
        add(model, lora_rank, lora_alpha, seed=seed, layout=lora_layout)  # reference | peft, see models/lora.py
        head_base = getattr(model.head, "base_layer", model.head)  # peft wraps the head
        set_trainable(model, [*lora_lib.lora_modules(model), head_base])
    else:
        raise ValueError(f"unknown trainable preset {preset!r}")


def trainable_summary(model: nn.Module) -> dict:
    """Names of the trainable tensors, and trainable/total parameter counts."""
    names, trainable, total = [], 0, 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            names.append(name)
    return {"trainable_params": trainable, "total_params": total, "trainable_tensors": names}


def frozen_prefix_stages(stage_modules: list[list[nn.Module]]) -> int:
    """How many leading stages are exact, deterministic functions of the input.

    A stage qualifies when none of the parameters it uses train and no dropout in it is active;
    its output can then be computed once and reused. Decided from the modules each stage runs, so
    tied or shared weights are judged where they are used.
    """
    count = 0
    for modules in stage_modules:
        for module in modules:
            if any(p.requires_grad for p in module.parameters()):
                return count
            if any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
                return count
        count += 1
    return count
