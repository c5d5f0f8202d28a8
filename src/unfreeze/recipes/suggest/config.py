"""Every option of `unfreeze suggest`: classify's (a candidate's full run is a classify run) and the search's."""

from __future__ import annotations

from dataclasses import dataclass

from unfreeze.config import option
from unfreeze.recipes.classify.config import ClassifierOptions

DEFAULT_CANDIDATES = "last_layer,last_block,last_blocks:4,all,lora,bias"


@dataclass
class SuggestConfig(ClassifierOptions):
    """Which parameters should I train? Rank candidate presets at a fraction of the exhaustive sweep's cost.

    Every classify option means what it means for `unfreeze classify`: a candidate trained to its end is the
    classify run of that preset. `--out` holds suggestion.json and its picture; `--feature_cache_dir` the
    shared frozen-prefix caches (default ~/.cache/unfreeze/features)."""

    candidates: str = DEFAULT_CANDIDATES
    """comma-separated trainable presets to rank, any of classify's --trainable_layers: last_layer,
    last_block, last_two_blocks, last_blocks:N, blocks:A-B, all, lora, lora_alternative, bias, norms"""
    budget: str = "0.2"
    """what suggest may spend: a share of the exhaustive sweep's predicted compute (0.2 = a fifth of
    candidates x --seeds full runs), or seconds with an s suffix (e.g. 300s)"""
    seeds: int = 3
    """seeds per candidate of the exhaustive sweep that --budget is a share of (and of --write_sweep)"""
    eta: int = 2
    """successive halving keeps 1/eta of the candidates after each round"""
    top: int = 3
    """candidates written to --write_sweep"""
    write_sweep: str | None = option(None, path=True)
    """write a sweep file (YAML) of the top candidates, to confirm with `unfreeze sweep FILE`"""
    export: str | None = option(None, path=True)
    """folder to write the pick and the other --top candidates into for other stacks: one subfolder per
    candidate, in rank order (1-<pick>/, 2-.../), each as classify's --export writes it, and export.json"""
