"""Every flag of `unfreeze eval-gsm8k` (kept apart from the recipe so the CLI lists them without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass

from unfreeze.config import option
from unfreeze.data.gsm8k import PROMPT_TEMPLATE

DEFAULT_PAUSE_TOKEN = "<|pause|>"


@dataclass
class EvalConfig:
    """Score a model on GSM8K test by greedy generation (pauses included): every flag of `unfreeze eval-gsm8k`."""

    model: str | None = option(None, path=True)
    """model folder (`unfreeze sft`'s <out>/final, or a plain Hugging Face causal LM) or a .gguf file"""
    data: str | None = option(None, path=True)
    """GSM8K test file, or folder with test.jsonl/test.json; unset: download openai/gsm8k"""
    limit: int | None = None
    """score only the first N questions"""
    batch_size: int = 8
    """questions per generation batch"""
    max_new_tokens: int = 256
    """generation budget per answer (pauses count)"""
    pause_temperature: float = 1.0
    """multiply the odds of pausing: 0 never pauses, 1 unchanged, >1 more pauses"""
    train_stats: str | None = option(None, path=True)
    """training file (or folder with train.json[l]) whose mean pauses per answer is recorded as
    train_mean_pauses_per_answer
    """
    out: str | None = option(None, path=True, role="out")
    """run folder for test_results.json, metrics.json, eval_config.json, run.log"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    max_length: int | None = None
    """generation budget per question, prompt included (the PauseToken reference: 1024); with
    --max_new_tokens the tighter one wins per question"""

    overwrite: bool = False
    """replace the finished evaluation in --out (its metrics.json stays until the new one has succeeded)"""

    prompt_template: str = PROMPT_TEMPLATE
    """the text before the reply, {prompt} standing for the question (literal braces: {{ }}); use the one the
    model was trained with (`unfreeze sft`'s prompt_template; test: true passes it on)"""
