"""The inputs of `unfreeze classify` (and of every suggest candidate): checked options, data split and
tokenised, the model's config and structure, the device -- everything read and checked before a run
writes anything.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from unfreeze.data import labelled, sms_spam
from unfreeze.errors import UsageError, require
from unfreeze.files import check_output_path
from unfreeze.models.choice import parse_choice
from unfreeze.models.classifier import PAD_TOKEN_ID
from unfreeze.models.loading import ModelSource
from unfreeze.models.model_config import context_size
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.classify.model import body_config, check_structure, model_source, padding_token
from unfreeze.resources import resolve_device
from unfreeze.training.loop import SPLITS


def validate(cfg: ClassifyConfig) -> ClassifyConfig:
    """Reject impossible combinations before anything is loaded; returns the options with their canonical
    spelling (precision bf16 -> bf16-mixed)."""
    require(cfg.num_epochs >= 1, f"--num_epochs must be at least 1 (got {cfg.num_epochs})")
    require(cfg.batch_size >= 1, f"--batch_size must be at least 1 (got {cfg.batch_size})")
    require(cfg.accumulation_steps >= 1, f"--accumulation_steps must be at least 1 (got {cfg.accumulation_steps})")
    require(cfg.lora_rank >= 1, f"--lora_rank must be at least 1 (got {cfg.lora_rank})")
    require(cfg.eval_every >= 1 and cfg.eval_batches >= 1, "--eval_every and --eval_batches must be at least 1")
    require(not (cfg.no_padding and cfg.batch_size > 1),
            f"--no_padding needs --batch_size 1 (got {cfg.batch_size}): unpadded examples differ in length")
    if cfg.context_length not in ("longest_training_example", "model_context_length"):
        try:
            length = int(cfg.context_length)
        except ValueError:
            raise UsageError(
                f"--context_length {cfg.context_length!r}: use longest_training_example, model_context_length or an integer"
            ) from None
        require(length >= 1, f"--context_length must be positive (got {length})")
    require(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number (got {cfg.lr})")
    require(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0,
            f"--weight_decay must be a number >= 0 (got {cfg.weight_decay})")
    require(cfg.cache_budget_gb is None or (math.isfinite(cfg.cache_budget_gb) and cfg.cache_budget_gb >= 0),
            f"--cache_budget_gb must be a number of GiB >= 0 (got {cfg.cache_budget_gb}); leave it out for a "
            "quarter of the free memory")
    require(-2**63 <= cfg.seed < 2**64, f"--seed {cfg.seed} does not fit in 64 bits; use e.g. 123")
    labelled.parse_limit(cfg.limit)
    require(not (any(term.lora for term in parse_choice(cfg.trainable_layers)) and cfg.lora_alpha == 0),
            "--lora_alpha 0 scales every LoRA update to zero, so nothing but the head would learn; use e.g. 8")
    for flag, value in (("--out", cfg.out), ("--tokenizer", cfg.tokenizer), ("--data", cfg.data)):
        require(value is None or bool(value.strip()), f"{flag} is empty; give a path, or leave {flag} out")
    model_source(cfg).check()
    if getattr(cfg, "export", None) is not None:
        check_output_path(cfg.export, "--export")
    return dataclasses.replace(cfg, precision="bf16-mixed" if cfg.precision == "bf16" else cfg.precision)


def downloads(cfg: ClassifyConfig) -> list:
    """Every download this run needs (data, weights, tokenizer): `offline.require_downloads` checks them."""
    return sms_spam.needed_download(cfg.data) + model_source(cfg).downloads()


def encode_splits(cfg: ClassifyConfig, splits: sms_spam.Splits, tokenizer, n_positions: int, log,
                  pad_token_id: int = PAD_TOKEN_ID):
    """Token ids per split: truncated and padded like the reference's SpamDataset."""
    encoded = {name: tokenizer(list(getattr(splits, name)["Text"]), add_special_tokens=False)["input_ids"]
               for name in SPLITS}
    longest_train = max(len(ids) for ids in encoded["train"])
    if cfg.no_padding:
        max_length = None
    elif cfg.context_length == "longest_training_example":
        max_length = longest_train
    elif cfg.context_length == "model_context_length":
        max_length = n_positions
    else:
        max_length = int(cfg.context_length)
    if max_length is not None and max_length > n_positions:
        said = (f"--context_length {max_length}" if cfg.context_length != "longest_training_example"
                else f"the longest training example ({max_length} tokens, --context_length longest_training_example)")
        raise UsageError(f"{said} exceeds the model's context length {n_positions}; "
                         f"use --context_length {n_positions} or less (longer texts are truncated)")
    tensors = {}
    for name, rows in encoded.items():
        limit = max_length if max_length is not None else n_positions
        truncated = sum(len(ids) > limit for ids in rows)
        if truncated:
            log.info(f"{name}: {truncated} example(s) truncated to {limit} tokens")
        rows = [ids[:limit] or [pad_token_id] for ids in rows]
        if max_length is not None:
            rows = [ids + [pad_token_id] * (max_length - len(ids)) for ids in rows]
        tensors[name] = [torch.tensor(ids, dtype=torch.long) for ids in rows]
    return tensors, (max_length if max_length is not None else longest_train)


def check_vocabulary(tokens: dict, vocab_size: int, cfg: ClassifyConfig, pad_token_id: int = PAD_TOKEN_ID) -> None:
    """Every input id (padding included) has a row in the model's embedding."""
    largest = max(int(row.max()) for rows in tokens.values() for row in rows)
    if largest < vocab_size:
        return
    if largest == pad_token_id == PAD_TOKEN_ID:
        raise UsageError(f"the model's vocab_size {vocab_size} has no row for GPT-2's padding token {PAD_TOKEN_ID}; "
                         f"use vocab_size {PAD_TOKEN_ID + 1} or more in --model_config")
    raise UsageError(f"--tokenizer {cfg.tokenizer or model_source(cfg).name} produces token id {largest}, but the model's "
                     f"vocabulary has {vocab_size} entries; use the model's tokenizer or raise vocab_size in --model_config")


@dataclass
class Inputs:
    """Everything checked before a run writes anything: data, tokens, model config, device."""

    splits: sms_spam.Splits
    tokens: dict  # split -> token ids per example
    labels: dict  # split -> class index per example
    max_length: int
    source: ModelSource
    config: object  # the base model's config (overrides applied, dropout 0, SDPA)
    device: torch.device
    pad_token_id: int = PAD_TOKEN_ID  # GPT-2: 50256 (the reference); else the tokenizer's pad (or eos) token


def load_inputs(cfg: ClassifyConfig, log) -> Inputs:
    """Read and check every input; a UsageError here leaves the output folder untouched."""
    splits = labelled.load_splits(cfg.data, labelled.DataOptions(cfg.text_column, cfg.label_column, cfg.split,
                                                                 cfg.balance, cfg.seed))
    splits = labelled.limited(splits, cfg.limit)
    for warning in labelled.warnings(splits):
        log.warning(f"warning: {warning}")
    require(cfg.batch_size <= len(splits.train),
            f"--batch_size {cfg.batch_size} is larger than the {len(splits.train)} training examples: the training "
            f"loader drops incomplete batches, so nothing would train; use --batch_size {len(splits.train)} or less")
    source = model_source(cfg)
    config = body_config(source, cfg.attn_implementation)
    check_structure(source, config, cfg.trainable_layers, cfg.lora_rank)
    tokenizer = source.load_tokenizer()
    pad_token_id = padding_token(tokenizer, config, source)
    tokens, max_length = encode_splits(cfg, splits, tokenizer, context_size(config), log, pad_token_id)
    check_vocabulary(tokens, config.vocab_size, cfg, pad_token_id)
    labels = {name: [int(v) for v in getattr(splits, name)["Label"]] for name in SPLITS}
    return Inputs(splits, tokens, labels, max_length, source, config, resolve_device(cfg.device), pad_token_id)
