"""Every option of `unfreeze classify`, with the reference script's names and defaults.

`ClassifierOptions` holds what a classification run needs apart from the choice of what trains; it is
shared by `ClassifyConfig` (which adds `--trainable_layers`) and `SuggestConfig` (which ranks candidates
instead). Its first block is `additional_experiments.py`'s flags (LLMs-from-scratch, ch06 bonus), kept
verbatim so that every usage line of the seed table runs with the script name replaced; the rest is what
real use needs on top (local data, tokenizer, architecture, seed, output, device, speed). The docstring
under each field is its `--help` text.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

from jsonargparse.typing import register_type

from unfreeze.config import option
from unfreeze.tracking import ReportTo


class TrainableLayers(str):
    """A choice of what trains in the one vocabulary (`models/choice.py`): checked when parsed, so a bad word is one
    line before anything runs; whether its blocks exist is checked against the model (on the meta device)."""


def _trainable_layers(value) -> TrainableLayers:
    from unfreeze.models.choice import ChoiceError, check_syntax

    text = str(value)
    try:
        if not isinstance(value, str):  # YAML read `a:b:` as a mapping: never a choice (the message shows the text)
            check_syntax("")
        return TrainableLayers(check_syntax(text))
    except ChoiceError as err:
        raise (err.value_error(text) if isinstance(value, str) else ValueError(f"{text!r}: {err.why}")) from None


register_type(TrainableLayers, serializer=str, deserializer=_trainable_layers)
TokenPosition = Literal["first", "last", "flexible"]
Weights = Literal["pretrained", "random"]
TOKEN_POSITIONS = typing.get_args(TokenPosition)
WEIGHTS = typing.get_args(Weights)
# The reference's preset names (more: unfreeze.models.trainable.PRESETS, last_blocks:N, blocks:A-B).
TRAINABLE_LAYERS = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative")


@dataclass
class ClassifierOptions:
    """What a classification run needs apart from what trains (shared by classify and suggest)."""

    # --- the reference script's flags -------------------------------------------------------------
    model_size: str = option("gpt2-small (124M)", path=True)
    """'gpt2-small (124M)', 'gpt2-medium (355M)', 'gpt2-large (774M)', 'gpt2-xl (1558M)', a Hugging Face hub
    id, or a local model folder
    """
    weights: Weights = "pretrained"
    """start from pretrained or random weights"""
    trainable_token_pos: TokenPosition = "last"
    """whose output token classifies: first, last, or flexible (last non-padding token)"""
    average_embeddings: bool = False
    """classify the mean of all positions' outputs instead of one position"""
    context_length: str = "longest_training_example"
    """pad/truncate inputs to: longest_training_example, model_context_length, or an integer"""
    lora_rank: int = 8
    """LoRA rank (the lora presets)"""
    lora_alpha: int = 8
    """LoRA alpha; like the reference, the update is scaled by alpha (not alpha/rank)"""
    no_padding: bool = False
    """do not pad examples (each keeps its own length); needs --batch_size 1"""
    num_epochs: int = 5
    """training epochs"""
    batch_size: int = 8
    """examples per batch"""
    accumulation_steps: int = 1
    """batches whose gradients are summed before one optimizer step"""
    disable_causal_mask: bool = False
    """every token attends to every token (including padding)"""
    ignore_index: int = -100
    """target value ignored by the cross-entropy loss"""
    # --- real use ---------------------------------------------------------------------------------
    model: str | None = option(None, path=True)
    """any Hugging Face decoder model: a hub id, a local folder or a .gguf file (GPT-2, Llama, Qwen2, GPT-NeoX,
    Mistral, Phi, Gemma, SmolLM, ...); replaces --model_size. GPT-2 keeps the reference's padding (50256, no
    attention mask, `last` = the last padded position, mean over every position); other models are padded on
    the right with their pad token (eos where none) under an attention mask, and `last`/`flexible` = the last
    real token, mean = over the real tokens
    """
    data: str | None = option(None, path=True)
    """labelled data: the raw SMSSpamCollection file (the reference's split); a .csv/.tsv/.jsonl/.json/.parquet
    file (split by --split); a folder with train, validation (or val/dev) and test files; or a datasets hub
    name such as ag_news or glue:sst2 (default: download the SMS Spam Collection from UCI into ~/.cache/unfreeze)
    """
    text_column: str | None = None
    """column holding the text (default: the first of Text, text, sentence, content)"""
    label_column: str | None = None
    """column holding the class, strings or integers; classes are numbered in sorted order (default: the first
    of Label, label, labels, class)"""
    split: str | None = None
    """train,validation,test fractions that cut a single --data file after a shuffle with --seed (default
    0.7,0.1,0.2; the SMSSpamCollection file keeps the reference's split unless --split or --balance false is given)"""
    balance: bool | None = None
    """true: undersample every class to the size of the smallest, as the reference does for ham; false: keep
    every row (default: true for the SMSSpamCollection file, false otherwise)"""
    limit: str | None = None
    """keep only the first examples of each split, after the split: a count (200) or train,validation,test counts
    (160,50,150); for a quick run on part of the data"""
    tokenizer: str | None = option(None, path=True)
    """tokenizer folder (vocab.json+merges.txt or encoder.json+vocab.bpe) or hub id (default: the model's)"""
    model_config: str | None = None
    """JSON architecture overrides for --weights random, e.g. '{"n_layer":2,"n_embd":128,"n_head":4}'"""
    seed: int = option(123, role="seed")
    """seed for random weights, the new head, and data order (the reference uses 123)"""
    out: str | None = option(None, path=True, role="out")
    """run folder for metrics.json, config.json and run.log"""
    overwrite: bool = False
    """replace the finished run in --out (its results stay until the new run has succeeded)"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """attention kernels: auto (SDPA where the architecture has it, else eager), sdpa, eager, or flash_attention_2
    (needs the flash-attn package and a CUDA GPU); recorded in metrics.json"""
    gradient_checkpointing: bool = False
    """recompute the activations of the blocks that train in backward instead of keeping them: less memory for
    `all` and LoRA on large models, about a third more compute; the same result"""
    precision: Literal["fp32", "bf16-mixed", "bf16"] = "fp32"
    """fp32, or bf16-mixed: bf16 autocast with fp32 weights and AdamW state (the cache is then stored in bf16);
    bf16 is the older spelling of bf16-mixed"""
    cache_activations: Literal["auto", "on", "off"] = "auto"
    """compute the frozen prefix's activations once: auto (where exact), on, off"""
    cache_budget_gb: float | None = None
    """memory the activation cache may use (default: a quarter of available memory)"""
    feature_cache_dir: str | None = option(None, path=True)
    """folder of shared on-disk frozen-prefix caches (as `unfreeze suggest` builds them): reused when one
    matches this run's frozen network, data, context length, pooling and precision, else built there; the
    in-memory cache otherwise (default: none; `unfreeze sweep` passes <out>/features)"""
    feature_cache_budget_gb: float | None = None
    """disk the shared feature cache may use (default: a quarter of the free disk under --feature_cache_dir)"""
    eval_every: int = 50
    """steps between the periodic loss evaluations (the reference's eval_freq, 50)"""
    eval_batches: int = 5
    """batches per periodic evaluation (the reference's eval_iter, 5)"""
    lr: float = 5e-05
    """AdamW learning rate"""
    weight_decay: float = 0.1
    """AdamW weight decay"""
    lora_layout: Literal["reference", "peft"] = "reference"
    """where LoRA updates sit: reference (separate query/key/value updates, as the reference's GPT; three on
    GPT-2's fused c_attn) or peft (one update per layer)"""
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

    # The reference's names for options that carry one name across every task here.
    ALIASES: ClassVar[dict[str, str]] = {"eval_freq": "eval_every", "eval_iter": "eval_batches",
                                         "trainable": "trainable_layers"}


@dataclass
class ClassifyConfig(ClassifierOptions):
    """Fine-tune a decoder model as a text classifier (seed table 000: GPT-2 on SMS spam); every flag of
    additional_experiments.py."""

    trainable_layers: TrainableLayers = "last_block"
    """which parameters train (also --trainable; sft takes the same words): last_layer (the head), last_block,
    last_two_blocks, all, lora, lora_alternative, bias (every bias, BitFit), norms (every normalisation layer),
    last_blocks:N (the last N blocks), blocks:SET (e.g. 3,7,9-11; 0-based) -- the block words also train the
    final norm when they include the last block -- and the parts attention:BLOCKS, mlp:BLOCKS, lora:BLOCKS
    (BLOCKS: last_block, last_blocks:N, blocks:SET or all), embeddings; join several with + (e.g.
    mlp:blocks:8-11+norms); the new head trains under every choice (docs/trainable.md)
    """
    save_model: bool = True
    """save the trained classifier in <out>/final/ (AutoModelForSequenceClassification, with its tokenizer and
    model card; LoRA runs also a PEFT adapter in final/adapter/)"""
    export: str | None = option(None, path=True)
    """folder to write the choice into for other stacks: adapter_config.json (PEFT), axolotl.yaml,
    llamafactory.yaml, trainable_parameters.txt, and export.json (what was written, what not and why)"""
