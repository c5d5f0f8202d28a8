"""Candidate names -> the parameters they train, where their frozen prefix ends, and whether classify runs them.

Today's classify presets resolve through `models/trainable.py`. Two more are resolved here from module
structure until branch `arch` adds them to `trainable.py` (TEMPORARY, marked below):

| candidate      | trains                                                                 |
|----------------|------------------------------------------------------------------------|
| last_blocks:N  | the last N blocks, the final norm, the head                            |
| bias           | BitFit: every module's own `bias` parameter, plus the head              |
"""

from __future__ import annotations

import re

from torch import nn

from unfreeze.cache.frozen_prefix import frozen_prefix_stages
from unfreeze.errors import UsageError
from unfreeze.models import trainable

KNOWN = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative", "bias")
BLOCKS_RE = re.compile(r"^last_blocks:(\d+)$")


def parse_candidates(text: str) -> list[str]:
    """`--candidates a,b,c` -> distinct names, each checked (one line naming the bad one)."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise UsageError("--candidates is empty; e.g. --candidates last_layer,last_block,all,lora")
    for name in names:
        match = BLOCKS_RE.match(name)
        if name not in KNOWN and not (match and int(match.group(1)) >= 1):
            raise UsageError(f"--candidates: unknown candidate {name!r}; use {', '.join(KNOWN)} or last_blocks:N (N >= 1)")
    return names


def _blocks(model: nn.Module) -> list[nn.Module]:
    # TEMPORARY until `arch`: the generic classifier exposes `blocks`; today's GPT-2 one keeps them in body.h.
    return list(model.blocks) if hasattr(model, "blocks") else list(model.body.h)


def _final_norm(model: nn.Module) -> nn.Module:
    # TEMPORARY until `arch` (see _blocks).
    return model.final_norm if hasattr(model, "final_norm") else model.body.ln_f


def _own_biases(model: nn.Module) -> list[nn.Parameter]:
    """Each module's `bias` parameter (the attribute of the module, not a name pattern)."""
    return [m.bias for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)]


def selection(model: nn.Module, name: str, lora_rank: int, lora_alpha: float, seed: int) -> trainable.Selection:
    """The parameters candidate `name` trains in `model` (LoRA candidates add their adapters first)."""
    match = BLOCKS_RE.match(name)
    if match:  # TEMPORARY until `arch` adds last_blocks:N to trainable.py
        count = int(match.group(1))
        if count > len(_blocks(model)):
            raise UsageError(f"--candidates {name}: the model has only {len(_blocks(model))} blocks")
        modules = [*_blocks(model)[-count:], _final_norm(model), model.head]
        return trainable.Selection([name], list({id(p): p for m in modules for p in m.parameters()}.values()))
    if name == "bias":  # TEMPORARY until `arch` adds bias to trainable.py
        params = [*_own_biases(model), model.head.weight]
        return trainable.Selection([name], list({id(p): p for p in params}.values()))
    return trainable.preset_selection(model, name, lora_rank, lora_alpha, seed=seed)


def apply(model: nn.Module, name: str, lora_rank: int, lora_alpha: float, seed: int) -> trainable.TrainableSummary:
    """Make `model` train exactly candidate `name`; returns the counts."""
    chosen = selection(model, name, lora_rank, lora_alpha, seed)
    trainable.set_trainable(model, chosen.params)
    return trainable.trainable_summary(model, chosen)


def start_stage(model: nn.Module) -> int:
    """The first stage a training step must run (as classify's cache decides): 0 = the whole network,
    `final_stage + 1` = only the head, on pooled features."""
    frozen = frozen_prefix_stages(model.stage_modules())
    return 0 if frozen <= 1 else frozen
