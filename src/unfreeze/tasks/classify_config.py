"""Every option of `unfreeze classify`, with the reference script's names and defaults.

The first block is `additional_experiments.py`'s flags (LLMs-from-scratch, ch06 bonus), kept
verbatim so that every usage line of the seed table runs with the script name replaced; the second
block is what real use needs on top (local data, tokenizer, architecture, seed, output, device, speed).
"""

from __future__ import annotations

from dataclasses import dataclass

from unfreeze.config import field

TRAINABLE_LAYERS = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative")
TOKEN_POSITIONS = ("first", "last", "flexible")
WEIGHTS = ("pretrained", "random")


@dataclass
class ClassifyConfig:
    # --- the reference script's flags -------------------------------------------------------------
    model_size: str = field(
        "gpt2-small (124M)",
        "'gpt2-small (124M)', 'gpt2-medium (355M)', 'gpt2-large (774M)', 'gpt2-xl (1558M)', "
        "a Hugging Face hub id, or a local model folder",
    )
    weights: str = field("pretrained", "start from pretrained or random weights", choices=WEIGHTS)
    trainable_layers: str = field("last_block", "which parameters train", choices=TRAINABLE_LAYERS)
    trainable_token_pos: str = field(
        "last", "whose output token classifies: first, last, or flexible (last non-padding token)",
        choices=TOKEN_POSITIONS,
    )
    average_embeddings: bool = field(False, "classify the mean of all positions' outputs instead of one position")
    context_length: str = field(
        "longest_training_example",
        "pad/truncate inputs to: longest_training_example, model_context_length, or an integer",
    )
    lora_rank: int = field(8, "LoRA rank for --trainable_layers lora/lora_alternative")
    lora_alpha: int = field(8, "LoRA alpha; like the reference, the update is scaled by alpha (not alpha/rank)")
    no_padding: bool = field(False, "do not pad examples (each keeps its own length); needs --batch_size 1")
    num_epochs: int = field(5, "training epochs")
    batch_size: int = field(8, "examples per batch")
    accumulation_steps: int = field(1, "batches whose gradients are summed before one optimizer step")
    disable_causal_mask: bool = field(False, "every token attends to every token (including padding)")
    ignore_index: int = field(-100, "target value ignored by the cross-entropy loss")
    # --- real use ---------------------------------------------------------------------------------
    data: str | None = field(
        None, "the raw SMSSpamCollection file, or a folder with train.csv/validation.csv/test.csv "
        "(default: download from UCI into ~/.cache/unfreeze)",
    )
    tokenizer: str | None = field(
        None, "tokenizer folder (vocab.json+merges.txt or encoder.json+vocab.bpe) or hub id (default: the model's)"
    )
    model_config: str | None = field(
        None, "JSON architecture overrides for the model, e.g. '{\"n_layer\":2,\"n_embd\":128,\"n_head\":4}'"
    )
    seed: int = field(123, "seed for random weights, the new head, and data order (the reference uses 123)")
    out: str | None = field(None, "run folder for metrics.json, config.json and run.log")
    device: str = field("auto", "auto, cpu, cuda or mps")
    cache_activations: str = field(
        "auto", "compute the frozen prefix's activations once: auto (where exact), on, off",
        choices=("auto", "on", "off"),
    )
    cache_budget_gb: float | None = field(
        None, "memory the activation cache may use (default: a quarter of available memory)"
    )
    precision: str = field("fp32", "fp32, or bf16 autocast (also stores the cache in bf16)", choices=("fp32", "bf16"))
    eval_freq: int = field(50, "steps between loss evaluations (the reference uses 50)")
    eval_iter: int = field(5, "batches per periodic evaluation (the reference uses 5)")
    lr: float = field(5e-5, "AdamW learning rate")
    weight_decay: float = field(0.1, "AdamW weight decay")
    # --- added by faithful-reference ---
    lora_layout: str = field(
        "reference", "where LoRA updates sit: reference (separate query/key/value updates, as the reference's "
        "GPT; three on GPT-2's fused c_attn) or peft (one update per layer)", choices=("reference", "peft"),
    )
