"""Every option of `unfreeze suggest`: the search's (`SearchOptions`), and the task's whose full run a candidate is:
classify's (`SuggestConfig`) or sft's (`SFTSuggestConfig`, `--task sft`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unfreeze.config import option
from unfreeze.recipes.classify.config import ClassifierOptions
from unfreeze.recipes.sft.config import SFTConfig

DEFAULT_CANDIDATES = "last_layer,last_block,last_blocks:4,all,lora,bias"
SFT_DEFAULT_CANDIDATES = "last_layer,last_block,last_blocks:4,mlp:last_blocks:4,norms,lora,all"


@dataclass
class SearchOptions:
    """What the search spends and writes, the same for every task."""

    task: Literal["auto", "classify", "sft"] = "auto"
    """what a candidate's full run is: classify (labelled data), sft (prompt/completion data), or auto: sft when
    a config file (YAML) is given or --data is a GSM8K or inject-pauses folder, classify otherwise"""
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


@dataclass
class SuggestConfig(ClassifierOptions, SearchOptions):
    """Which parameters should I train? Rank candidate presets at a fraction of the exhaustive sweep's cost.

    Every classify option means what it means for `unfreeze classify`: a candidate trained to its end is the
    classify run of that preset. `--out` holds suggestion.json and its picture; `--feature_cache_dir` the
    shared frozen-prefix caches (default ~/.cache/unfreeze/features). For prompt/completion data (an sft
    config), see `unfreeze suggest --task sft --help`."""

    candidates: str = DEFAULT_CANDIDATES
    """comma-separated trainable presets to rank, any of classify's --trainable_layers: last_layer,
    last_block, last_two_blocks, last_blocks:N, blocks:A-B, all, lora, lora_alternative, bias, norms"""
    export: str | None = option(None, path=True)
    """folder to write the pick and the other --top candidates into for other stacks: one subfolder per
    candidate, in rank order (1-<pick>/, 2-.../), each as classify's --export writes it, and export.json"""


@dataclass
class SFTSuggestConfig(SFTConfig, SearchOptions):
    """Which parameters should I train for generative fine-tuning? Rank candidates by validation loss on the
    completion at a fraction of the exhaustive sft sweep's cost.

    Every other key means what it means for `unfreeze sft` (a YAML config and key=value overrides, as sft reads
    them): a candidate trained to its end is the sft run of that config with the candidate's choice of what
    trains (which replaces the config's). `--out` holds suggestion.json and its picture."""

    candidates: str = SFT_DEFAULT_CANDIDATES
    """comma-separated choices to rank, each in sft's trainable_layers words (last_layer, last_blocks:4,
    mlp:last_blocks:4, norms, lora, all, lora:BLOCKS, new_tokens, ...) and the pause table's switches
    pause_embedding, pause_head, lm_head, lm_embeddings, peft (the LoRA adapter alone), joined with +; or
    pause_table: the 18 component combinations of seed table 003"""
    score: Literal["loss", "accuracy"] = "loss"
    """rank by validation loss on the completion; accuracy: also score the --top finalists by greedy
    generation on GSM8K test questions (loss and accuracy disagree in seed table 003) and pick by accuracy"""
    score_limit: int = 50
    """test questions each finalist answers with --score accuracy (from test_data or the data's test file)"""
