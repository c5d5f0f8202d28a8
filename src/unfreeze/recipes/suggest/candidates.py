"""Candidate names (classify presets; sft choices), their bounds, and where their frozen prefix ends.

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


# --- sft candidates -------------------------------------------------------------------------------------

# The pause table's switches (experiments/pause_warmup.yaml), as candidate words: `peft` is the `lora: true`
# switch (the adapter alone), since `lora` already names the preset that trains the LM head with it.
SFT_SWITCH_WORDS = {"pause_embedding": "unfreeze_pause_embedding", "pause_head": "unfreeze_pause_head",
                    "lm_head": "unfreeze_lm_head", "lm_embeddings": "unfreeze_lm_embeddings", "peft": "lora"}


def pause_table() -> list[str]:
    """The 18 component combinations of seed table 003, in its order: pause embedding and head trained, then
    the head frozen, then the embedding frozen; each without and with the LM head (and LM embeddings), without
    and with LoRA."""
    pause_parts = ("pause_embedding+pause_head", "pause_embedding", "pause_head")
    lm_parts = ("", "+lm_head", "+lm_head+lm_embeddings")
    return [f"{pause}{lm}{peft}" for pause in pause_parts for lm in lm_parts for peft in ("", "+peft")]


def split_sft_candidate(name: str) -> tuple[dict[str, bool], str | None]:
    """A candidate -> (sft's switches, all off but the ones it names; its trainable_layers words or None)."""
    terms = name.split("+")
    switches = {key: False for key in SFT_SWITCH_WORDS.values()}
    for term in terms:
        if term in SFT_SWITCH_WORDS:
            switches[SFT_SWITCH_WORDS[term]] = True
    words = "+".join(term for term in terms if term not in SFT_SWITCH_WORDS)
    return switches, words or None


def parse_sft_candidates(text: str) -> list[str]:
    """`--candidates` of `suggest --task sft` -> distinct names, `pause_table` expanded, each word checked."""
    names: list[str] = []
    for part in re.split(r",(?!\s*\d)", text):
        part = part.strip()
        names += pause_table() if part == "pause_table" else [part] if part else []
    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("--candidates is empty; e.g. --candidates last_layer,norms,lora,all")
    for name in names:
        _, words = split_sft_candidate(name)
        if words is not None:
            try:
                trainable.check_preset_syntax(words, "--candidates")
            except UsageError as err:
                raise UsageError(f"{err}; or the pause table's switches {', '.join(SFT_SWITCH_WORDS)}") from None
    return names
