"""Every option of `unfreeze suggest`: the candidates, the budget, and the classify flags a run needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_CANDIDATES = "last_layer,last_block,last_blocks:4,all,lora,bias"


@dataclass
class SuggestConfig:
    """Which parameters should I train? Rank candidate presets at a fraction of the exhaustive sweep's cost."""

    model_size: str = "gpt2-small (124M)"
    """the model, as classify's --model_size: a GPT-2 size, a hub id or a local folder"""
    data: str | None = None
    """labelled data, as classify's --data (the SMSSpamCollection file or a folder of split CSVs)"""
    tokenizer: str | None = None
    """tokenizer folder or hub id (default: the model's)"""
    candidates: str = DEFAULT_CANDIDATES
    """comma-separated trainable presets to rank, any of classify's --trainable_layers: last_layer,
    last_block, last_two_blocks, last_blocks:N, blocks:A-B, all, lora, lora_alternative, bias, norms"""
    budget: str = "0.2"
    """what suggest may spend: a share of the exhaustive sweep's predicted compute (0.2 = a fifth of
    candidates x --seeds full runs), or seconds with an s suffix (e.g. 300s)"""
    seeds: int = 3
    """seeds per candidate of the exhaustive sweep that --budget is a share of (and of --write_sweep)"""
    out: str | None = None
    """folder for suggestion.json and suggestion.png (default: print only)"""
    write_sweep: str | None = None
    """write a sweep file (YAML) of the top candidates, to confirm with `unfreeze sweep FILE`"""
    cache_dir: str | None = None
    """folder of the shared on-disk frozen-prefix caches (default: ~/.cache/unfreeze/features)"""
    cache_budget_gb: float | None = None
    """disk the cache may use (default: a quarter of the free disk under --cache_dir)"""
    weights: Literal["pretrained", "random"] = "pretrained"
    """start from pretrained or random weights"""
    model_config: str | None = None
    """JSON architecture overrides, as classify's --model_config"""
    num_epochs: int = 5
    """epochs of a full run (what the sweep would train, and the longest any candidate trains here)"""
    batch_size: int = 8
    """examples per batch"""
    lr: float = 5e-05
    """AdamW learning rate"""
    context_length: str = "longest_training_example"
    """pad/truncate inputs to: longest_training_example, model_context_length, or an integer"""
    lora_rank: int = 8
    """LoRA rank of the lora candidates"""
    lora_alpha: int = 8
    """LoRA alpha of the lora candidates (the update is scaled by alpha, as classify does)"""
    eta: int = 2
    """successive halving keeps 1/eta of the candidates after each round"""
    top: int = 3
    """candidates written to --write_sweep"""
    seed: int = 123
    """seed of the model's random weights, the new head and the data order (as classify's --seed)"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast (the cache is then stored in bf16)"""
    # --- added by suggest2 ---
    model: str | None = None
    """any Hugging Face decoder model, as classify's --model: a hub id, a local folder or a .gguf file
    (replaces --model_size)"""
    text_column: str | None = None
    """column holding the text, as classify's --text_column"""
    label_column: str | None = None
    """column holding the class, as classify's --label_column"""
    split: str | None = None
    """train,validation,test fractions for a single --data file, as classify's --split"""
    balance: bool | None = None
    """undersample every class to the smallest, as classify's --balance"""
