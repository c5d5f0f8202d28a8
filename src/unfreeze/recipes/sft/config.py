"""Every key of an `unfreeze sft` config: a YAML file, `key=value` overrides, flags and sweep rows fill it.

The docstring under each field is its `--help` text; unknown keys are errors wherever they are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from unfreeze.config import option
from unfreeze.data.gsm8k import PROMPT_TEMPLATE
from unfreeze.recipes.classify.config import TrainableLayers
from unfreeze.tracking import ReportTo


@dataclass
class SFTConfig:
    """Pause-token supervised fine-tuning (seed table 003): every key of an `unfreeze sft` config."""

    # --- model -------------------------------------------------------------------------------------------
    model: str = option("gpt2", path=True, init_subdir="final")
    """hub id, plain Hugging Face model folder, a .gguf file (llama.cpp, ollama), or a saved pause-model folder
    (e.g. a step-1 run's <out>/final)"""
    weights: Literal["pretrained", "random"] = option("pretrained", replaced_by_init=True)
    """pretrained weights, or random init (architecture from `model` + model_config)"""
    model_config: str | None = option(None, replaced_by_init=True)
    """JSON architecture overrides for weights=random, e.g. '{"n_layer":2,"n_embd":64,"n_head":2}'"""
    tokenizer: str | None = option(None, path=True, replaced_by_init=True)
    """tokenizer folder or hub id (default: the model's)"""
    # --- control tokens ----------------------------------------------------------------------------------
    pause_token: str | None = "<|pause|>"
    """the control token; null for the no-pause (step-1) baselines"""
    detach_head: bool = True
    """the pause head reads a detached hidden state (its loss never reaches the body)"""
    # --- what trains (everything else is frozen) ---------------------------------------------------------
    unfreeze_pause_embedding: bool = False
    """train the pause token's embedding row"""
    unfreeze_pause_head: bool = False
    """train the pause head"""
    unfreeze_lm_head: bool = False
    """train the LM head (untied from the input embeddings if only it trains)"""
    unfreeze_lm_embeddings: bool = False
    """train the LM input embeddings (untied from the LM head if only they train)"""
    lora: bool = False
    """train a LoRA adapter on the body (peft)"""
    trainable_layers: TrainableLayers | None = None
    """what else trains, in classify's words (also `trainable`), joined with the switches above: last_layer (the
    LM head), last_block, last_blocks:N, blocks:SET (e.g. 3,7,9-11), bias, norms, all, lora (these presets train
    the LM head too), and the parts attention:BLOCKS, mlp:BLOCKS, lora:BLOCKS (the adapter on those blocks only),
    embeddings, new_tokens (the pause row), pause_head; join with +, e.g. lora:last_blocks:8+new_tokens
    (docs/trainable.md)"""
    lora_rank: int = 16
    """LoRA rank (also accepted as lora_r, the reference's name)"""
    lora_alpha: int = 32
    """LoRA alpha (peft scales the update by alpha/r)"""
    lora_dropout: float = 0.05
    """LoRA dropout"""
    lora_target_modules: str | None = None
    """comma-separated module names (default q_proj,v_proj; GPT-2: c_attn)"""
    merge_lora: bool = False
    """merge the LoRA adapter into the weights before saving <out>/final"""
    # --- data --------------------------------------------------------------------------------------------
    data: str | None = option(None, path=True)
    """folder from `unfreeze inject-pauses` (train.json/test.json), a GSM8K folder (train.jsonl/test.jsonl), a
    folder with train.csv/.tsv/.parquet, or one training file (.json, .jsonl, .csv, .tsv or .parquet)
    """
    answer_field: str = "answer"
    """answer column of the data (inject-pauses' default column is pause_augmented_answer unless run with
    --pause_augm_col_name answer)
    """
    val_fraction: float = 0.1
    """share of the training file held out for validation (seeded split)"""
    train_limit: int | None = None
    """use only the first N rows of the training file (smoke tests)"""
    max_length: int = 600
    """maximum tokens per example; longer ones are cut (and counted)"""
    # --- training ----------------------------------------------------------------------------------------
    num_epochs: int = 1
    """training epochs"""
    batch_size: int = 8
    """examples per batch and process"""
    accumulation_steps: int = 1
    """batches whose gradients are summed before one optimizer step (also accepted as
    gradient_accumulation_steps, the reference's name)"""
    lr: float = 5e-05
    """AdamW learning rate (peak of the linear schedule)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_steps: int = 0
    """linear warm-up steps before the linear decay to 0"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (0: off)"""
    dropout: float | None = None
    """set every dropout of the model to this (null: keep the model's; GPT-2 checkpoints carry 0.1,
    Mistral/Llama 0.0)
    """
    cache_activations: Literal["auto", "on", "off"] = "auto"
    """compute the frozen prefix's hidden states once where everything that trains lies after a block boundary
    (and no dropout is active before it): each step then runs only the blocks after it and the heads; auto, on, off
    """
    cache_budget_gb: float | None = None
    """memory the hidden-state cache may use (default: a quarter of free memory); above it the run goes
    uncached
    """
    feature_cache_dir: str | None = option(None, path=True)
    """folder of shared on-disk frozen-prefix stores (the same as classify's): reused when one matches this run's
    frozen network, data and precision, else built there; memory otherwise (default: none)"""
    feature_cache_budget_gb: float | None = None
    """disk the shared store may use (default: a quarter of the free disk under feature_cache_dir)"""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """attention kernels: auto (SDPA where the architecture has it, else eager), sdpa, eager, or flash_attention_2
    (needs the flash-attn package and a CUDA GPU); recorded in metrics.json"""
    gradient_checkpointing: bool = False
    """recompute activations in backward (saves memory on big models)"""
    eval_every: int = 500
    """optimizer steps between validation losses (0: only at the end)"""
    eval_at_start: bool = False
    """also compute the validation losses before training"""
    eval_batch_size: int = 8
    """examples per validation batch"""
    log_every: int = 10
    """optimizer steps between training-loss log lines"""
    seed: int = option(42, role="seed")
    """seed for the split, new weights, data order and dropout"""
    report_to: ReportTo = "trackio"
    """experiment tracker of the run: trackio (local, no account: <out>/trackio, view with `trackio show`), wandb
    (WANDB_MODE=offline works without an account), mlflow (a local SQLite store), tensorboard, or none; a run
    without --out (or --tracker_dir) is not tracked"""
    run_name: str | None = None
    """the run's name in the tracker (default: --out's folder name; a sweep names its runs <sweep>/<row>/seed-<s>)"""
    run_group: str | None = None
    """the group of runs it belongs to in the tracker (a sweep sets its own name)"""
    tracker_dir: str | None = option(None, path=True)
    """folder the tracker writes in (default: --out; a sweep passes its own folder)"""
    out: str | None = option(None, path=True, role="out")
    """run folder (also --out): metrics.json, config.json, run.log, final/"""
    export: str | None = option(None, path=True)
    """folder to write what trained into for other stacks: adapter_config.json (PEFT), axolotl.yaml,
    llamafactory.yaml, trainable_parameters.txt, and export.json (what was written, what not and why)"""
    # --- GSM8K test evaluation after training ------------------------------------------------------------
    test: bool = False
    """score <out>/final on the GSM8K test set by greedy generation"""
    test_data: str | None = option(None, path=True)
    """GSM8K test file (default: the data folder's test.json/test.jsonl)"""
    test_limit: int | None = None
    """score only the first N test questions"""
    test_batch_size: int = 16
    """questions per generation batch"""
    max_new_tokens: int = 256
    """generation budget per answer"""
    test_max_length: int | None = None
    """test generation budget per question, prompt included (the reference: 1024); with max_new_tokens the
    tighter one wins"""
    # --- pause tokens in the text ------------------------------------------------------------------------
    pause_tokenization: Literal["exact", "reference"] = "exact"
    """exact: a pause leaves the answer's own tokens unchanged; reference: it swallows the whitespace around it,
    as the PauseToken reference's lstrip/rstrip token did (saved with the model)"""

    # --- checkpoints, and which weights are kept ---------------------------------------------------------
    save_steps: int = 0
    """optimizer steps between checkpoints in <out>/checkpoints (0: off); a run killed after one continues
    from it"""
    save_total_limit: int = 2
    """checkpoints kept (the most recent ones)"""
    resume: bool | None = None
    """null: continue an unfinished run in `out` from its latest checkpoint; true: that, and an error if there
    is none; false: start afresh"""
    keep: Literal["last", "best"] = "last"
    """weights saved to <out>/final and tested: the last, or the best (lowest eval_loss of the periodic and
    final validations)"""
    precision: Literal["fp32", "bf16-mixed", "bf16-pure"] = "fp32"
    """fp32; bf16-mixed (fp32 weights and AdamW state, bf16 autocast); or bf16-pure (weights, LoRA and AdamW
    states in bf16, as the reference)"""
    overwrite: bool = False
    """replace a finished run in `out` (its metrics.json stays until the new run has succeeded)"""

    prompt_column: str = "question"
    """column of the data holding the prompt text (GSM8K: question)"""
    completion_column: str | None = None
    """column holding the completion the model learns (null: answer_field, i.e. GSM8K's answer); the loss is
    on the completion only"""
    prompt_template: str = PROMPT_TEMPLATE
    """the text before the completion, with {prompt} standing for the prompt column (literal braces: {{ }});
    the default is the PauseToken reference's GSM8K prompt; test: true generates with it too"""

    # The reference's names (Hugging Face TrainingArguments, peft) for options named alike in every task here.
    ALIASES: ClassVar[dict[str, str]] = {"lora_r": "lora_rank", "gradient_accumulation_steps": "accumulation_steps",
                                         "trainable": "trainable_layers"}
    # Keys an older version took, and what replaced them.
    RETIRED: ClassVar[dict[str, str]] = {
        "dtype": "dtype was replaced by precision: precision=bf16-pure for bf16 weights, fp32 otherwise",
        "mixed_precision": "mixed_precision was replaced by precision: precision=bf16-mixed for bf16 autocast",
    }



COMPONENT_SWITCHES = {
    "pause_embedding": "unfreeze_pause_embedding", "pause_head": "unfreeze_pause_head",
    "lm_head": "unfreeze_lm_head", "lm_embeddings": "unfreeze_lm_embeddings", "lora": "lora",
}
