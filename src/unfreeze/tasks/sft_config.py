"""Every key of an `unfreeze sft` config: YAML file, `key=value` overrides, flags and sweep rows fill it."""

from __future__ import annotations

from dataclasses import dataclass

from unfreeze.config import field

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
MIXED_PRECISION = ("no", "fp16", "bf16")
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class SFTConfig:
    """Every key of an `unfreeze sft` YAML config (unknown keys are errors)."""

    # --- model ----------------------------------------------------------------------------------------
    model: str = field("gpt2", "hub id, plain Hugging Face model folder, or a saved pause-model folder "
                               "(e.g. a step-1 run's <out>/final)")
    weights: str = field("pretrained", "pretrained weights, or random init (architecture from `model` + model_config)",
                         choices=("pretrained", "random"))
    model_config: str | None = field(None, "JSON architecture overrides for weights=random, e.g. "
                                           "'{\"n_layer\":2,\"n_embd\":64,\"n_head\":2}'")
    tokenizer: str | None = field(None, "tokenizer folder or hub id (default: the model's)")
    dtype: str = field("float32", "dtype of the weights", choices=DTYPES)
    # --- control tokens -------------------------------------------------------------------------------
    pause_token: str | None = field("<|pause|>", "the control token; null for the no-pause (step-1) baselines")
    detach_head: bool = field(True, "the pause head reads a detached hidden state (its loss never reaches the body)")
    # --- what trains (everything else is frozen) ------------------------------------------------------
    unfreeze_pause_embedding: bool = field(False, "train the pause token's embedding row")
    unfreeze_pause_head: bool = field(False, "train the pause head")
    unfreeze_lm_head: bool = field(False, "train the LM head (untied from the input embeddings if only it trains)")
    unfreeze_lm_embeddings: bool = field(False, "train the LM input embeddings (untied from the LM head if only "
                                                "they train)")
    lora: bool = field(False, "train a LoRA adapter on the body (peft)")
    lora_r: int = field(16, "LoRA rank")
    lora_alpha: int = field(32, "LoRA alpha (peft scales the update by alpha/r)")
    lora_dropout: float = field(0.05, "LoRA dropout")
    lora_target_modules: str | None = field(None, "comma-separated module names (default q_proj,v_proj; GPT-2: c_attn)")
    merge_lora: bool = field(False, "merge the LoRA adapter into the weights before saving <out>/final")
    # --- data -----------------------------------------------------------------------------------------
    data: str | None = field(None, "folder from `unfreeze inject-pauses` (train.json/test.json), a GSM8K folder "
                                   "(train.jsonl/test.jsonl), or one training file")
    answer_field: str = field("answer", "answer column of the data (inject-pauses' default column is "
                                        "pause_augmented_answer unless run with --pause_augm_col_name answer)")
    val_fraction: float = field(0.1, "share of the training file held out for validation (seeded split)")
    train_limit: int | None = field(None, "use only the first N rows of the training file (smoke tests)")
    max_length: int = field(600, "maximum tokens per example; longer ones are cut (and counted)")
    # --- training -------------------------------------------------------------------------------------
    num_epochs: int = field(1, "training epochs")
    batch_size: int = field(8, "examples per batch and process")
    gradient_accumulation_steps: int = field(1, "batches per optimizer step")
    lr: float = field(5e-5, "AdamW learning rate (peak of the linear schedule)")
    weight_decay: float = field(0.0, "AdamW weight decay")
    warmup_steps: int = field(0, "linear warm-up steps before the linear decay to 0")
    max_grad_norm: float = field(1.0, "gradient clipping norm (0: off)")
    mixed_precision: str = field("no", "accelerate mixed precision", choices=MIXED_PRECISION)
    dropout: float | None = field(None, "set every dropout of the model to this (null: keep the model's; "
                                        "GPT-2 checkpoints carry 0.1, Mistral/Llama 0.0)")
    cache_activations: str = field("auto", "compute the frozen body's final hidden states once when only heads "
                                           "on top train and no dropout is active: auto, on, off",
                                   choices=("auto", "on", "off"))
    cache_budget_gb: float | None = field(None, "memory the hidden-state cache may use (default: a quarter of "
                                                "free memory); above it the run goes uncached")
    gradient_checkpointing: bool = field(False, "recompute activations in backward (saves memory on big models)")
    eval_every: int = field(500, "optimizer steps between validation losses (0: only at the end)")
    eval_at_start: bool = field(False, "also compute the validation losses before training")
    eval_batch_size: int = field(8, "examples per validation batch")
    log_every: int = field(10, "optimizer steps between training-loss log lines")
    seed: int = field(42, "seed for the split, new weights, data order and dropout")
    report_to: str = field("none", "experiment tracker (accelerate)", choices=REPORT_TO)
    out: str | None = field(None, "run folder (also --out): metrics.json, config.json, run.log, final/")
    # --- GSM8K test evaluation after training ---------------------------------------------------------
    test: bool = field(False, "score <out>/final on the GSM8K test set by greedy generation")
    test_data: str | None = field(None, "GSM8K test file (default: the data folder's test.json/test.jsonl)")
    test_limit: int | None = field(None, "score only the first N test questions")
    test_batch_size: int = field(16, "questions per generation batch")
    max_new_tokens: int = field(256, "generation budget per answer")
    # --- added by spine-sft-recipe ---
    save_steps: int = field(0, "optimizer steps between checkpoints in <out>/checkpoints (0: off); a run killed "
                               "after one continues from it")
    save_total_limit: int = field(2, "checkpoints kept (the most recent ones)")
    resume: bool | None = field(None, "null: continue an unfinished run in `out` from its latest checkpoint; "
                                      "true: that, and an error if there is none; false: start afresh")
    keep: str = field("last", "weights saved to <out>/final and tested: the last, or the best (lowest eval_loss "
                              "of the periodic and final validations)", choices=("last", "best"))
    precision: str | None = field(None, "bf16-pure (weights, LoRA and AdamW states in bf16, as the reference), "
                                        "bf16-mixed (fp32 weights, bf16 autocast) or fp32; null: dtype and "
                                        "mixed_precision decide")


COMPONENT_SWITCHES = {
    "pause_embedding": "unfreeze_pause_embedding", "pause_head": "unfreeze_pause_head",
    "lm_head": "unfreeze_lm_head", "lm_embeddings": "unfreeze_lm_embeddings", "lora": "lora",
}
