"""Every flag of `unfreeze inject-pauses`: the reference `gsm8k_pause_injector.py`'s names and defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

from unfreeze.config import option

DEFAULT_PATTERNS = '{"=": 1, "\\n": 1}'  # the reference default: one pause after "=" and after each newline


@dataclass
class InjectPausesConfig:
    """Write GSM8K with pause tokens injected into the training answers (the pause table's data)."""

    dataset_location: str | None = option(None, path=True)
    """folder with train/test as .jsonl or .json; default: download openai/gsm8k (config main), else GitHub
    openai/grade-school-math"""
    pause_token: str = "<|PAUSE|>"
    """the pause token string to inject"""
    n_pauses_per_patterns: str = DEFAULT_PATTERNS
    """JSON object: regex pattern -> number of pauses inserted after each match; a newline pattern also puts
    that many at the very start ('{}' for none)"""
    n_random_pauses: int = 0
    """pauses per answer at uniformly random slots (token boundaries, or spaces)"""
    n_leading_pauses: int = 0
    """pauses at the very start of every answer"""
    variable_number_of_pauses: bool = False
    """draw the number of random pauses uniformly from 0..--n_random_pauses per sample"""
    tokenizer_hf_name: str = option("None", path=True)
    """hub id or local folder; random pauses go between its tokens. None: between words (before spaces)"""
    augm_dataset_save_location: str = option(os.path.join("data", "gsm8k_pause_injected"), path=True, role="out")
    """folder that receives train.json and test.json"""
    pause_augm_col_name: str = "pause_augmented_answer"
    """column receiving the augmented answer ('answer' replaces the original)"""
    n_generated_samples_per_datapoint: int = 1
    """independently augmented copies of the training set, concatenated"""
    verbose: bool = False
    """print the parameters, steps and a sample"""
    seed: int | None = None
    """random seed; the same flags and seed give byte-identical files"""
    # --- added by robust-inputs ---
    overwrite: bool = False
    """replace train.json and test.json of an earlier run in --augm_dataset_save_location (atomically, once the
    new ones are ready)"""
