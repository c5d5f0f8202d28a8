"""Candidate names (classify presets), their bounds, and where their frozen prefix ends.

A candidate is any `unfreeze classify --trainable_layers` preset (last_layer, last_block, last_two_blocks,
last_blocks:N, blocks:A-B, all, lora, lora_alternative, bias, norms): it resolves through
`models/trainable.py`, so a candidate trains exactly what the classify run of the same name trains.
"""

from __future__ import annotations

import re

from torch import nn

from unfreeze.cache.memory import frozen_prefix_stages
from unfreeze.errors import UsageError
from unfreeze.models import trainable


def parse_candidates(text: str) -> list[str]:
    """`--candidates a,b,c` -> distinct names, each checked (one line naming the bad one)."""
    # A comma followed by a digit belongs to a block set (`blocks:3,7`): candidates never start with one.
    names = list(dict.fromkeys(part.strip() for part in re.split(r",(?!\s*\d)", text) if part.strip()))
    if not names:
        raise UsageError("--candidates is empty; e.g. --candidates last_layer,last_block,all,lora")
    for name in names:
        try:
            trainable.check_preset_syntax(name, "--candidates")
        except UsageError as err:
            raise UsageError(f"{err}; --candidates takes any of classify's --trainable_layers presets") from None
    return names


def check_bounds(names: list[str], num_blocks: int) -> None:
    """Block presets name blocks the model has (one line naming the bad candidate)."""
    for name in names:
        trainable.preset_blocks(name, num_blocks, "--candidates")


def start_stage(model: nn.Module) -> int:
    """The first stage a training step must run (as classify's cache decides): 0 = the whole network,
    `final_stage + 1` = only the head, on pooled features."""
    frozen = frozen_prefix_stages(model.stage_modules())
    return 0 if frozen <= 1 else frozen
