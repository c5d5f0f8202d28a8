"""`unfreeze classify`: which parameters to train, for a decoder model (GPT-2 by default) on SMS spam.

setup (data, tokenizer, model, what trains, activation cache) -> train -> evaluate -> write results.
The semantics follow the reference script `additional_experiments.py` (LLMs-from-scratch ch06);
where we deviate, the comment says so and why.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unfreeze.cache import frozen_prefix, shared
from unfreeze.cache.policy import CacheRequest
from unfreeze.config import to_dict
from unfreeze.data import labelled, sms_spam
from unfreeze.errors import UsageError, require
from unfreeze.files import (
    atomic_write_json,
    close_logger,
    is_finished,
    log_failure,
    prepare_run_folder,
    run_logger,
    start_run_log,
)
from unfreeze.models import loading
from unfreeze.models.classifier import PAD_TOKEN_ID, DecoderClassifier
from unfreeze.models.gguf import is_gguf, split_source
from unfreeze.offline import require_downloads
from unfreeze.tasks.classify_config import ClassifyConfig
from unfreeze.tasks.classify_model import (
    body_config,
    build_trainable_model,
    check_structure,
    context_size,
    is_gpt2,
    load_tokenizer,
    model_source,
    padding_token,
)
from unfreeze.tasks.classify_eval import evaluate, score_lines, score_metrics

SPLITS = ("train", "validation", "test")


# --- setup ----------------------------------------------------------------------------------------
def validate(cfg: ClassifyConfig) -> None:
    """Reject impossible combinations before anything is loaded."""
    require(cfg.num_epochs >= 1, f"--num_epochs must be at least 1 (got {cfg.num_epochs})")
    require(cfg.batch_size >= 1, f"--batch_size must be at least 1 (got {cfg.batch_size})")
    require(cfg.accumulation_steps >= 1, f"--accumulation_steps must be at least 1 (got {cfg.accumulation_steps})")
    require(cfg.lora_rank >= 1, f"--lora_rank must be at least 1 (got {cfg.lora_rank})")
    require(cfg.eval_freq >= 1 and cfg.eval_iter >= 1, "--eval_freq and --eval_iter must be at least 1")
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
    require(not (cfg.trainable_layers.startswith("lora") and cfg.lora_alpha == 0),
            "--lora_alpha 0 scales every LoRA update to zero, so nothing but the head would learn; use e.g. 8")
    for flag, value in (("--out", cfg.out), ("--tokenizer", cfg.tokenizer), ("--data", cfg.data)):
        require(value is None or bool(value.strip()), f"{flag} is empty; give a path, or leave {flag} out")
    require(cfg.model is None or bool(cfg.model.strip()), "--model is empty; give a hub id, a folder or a .gguf file")
    source, flag = model_source(cfg)
    if is_gguf(source):
        split_source(source, flag)
    else:
        loading.check_model_folder(cfg.model_size if cfg.model is None else cfg.model, flag)


def check_downloads(cfg: ClassifyConfig) -> None:
    """Every download this run needs can happen (or is cached); else one line naming every flag."""
    source, flag = model_source(cfg)
    require_downloads(sms_spam.needed_download(cfg.data)
                      + loading.hub_downloads(source, cfg.weights, cfg.tokenizer, flag))


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
    raise UsageError(f"--tokenizer {cfg.tokenizer or model_source(cfg)[0]} produces token id {largest}, but the model's "
                     f"vocabulary has {vocab_size} entries; use the model's tokenizer or raise vocab_size in --model_config")


@dataclass
class Inputs:
    """Everything checked before a run writes anything: data, tokens, model config, device."""

    splits: sms_spam.Splits
    tokens: dict
    max_length: int
    config: object
    device: torch.device
    pad_token_id: int = PAD_TOKEN_ID  # GPT-2: 50256 (the reference); else the tokenizer's pad (or eos) token


def load_inputs(cfg: ClassifyConfig, log) -> Inputs:
    """Read and check every input; a UsageError here leaves the output folder untouched."""
    splits = labelled.load_splits(cfg.data, labelled.DataOptions(cfg.text_column, cfg.label_column, cfg.split,
                                                                 cfg.balance, cfg.seed))
    for warning in labelled.warnings(splits):
        log.warning(f"warning: {warning}")
    require(cfg.batch_size <= len(splits.train),
            f"--batch_size {cfg.batch_size} is larger than the {len(splits.train)} training examples: the training "
            f"loader drops incomplete batches, so nothing would train; use --batch_size {len(splits.train)} or less")
    config = body_config(cfg)
    source, flag = model_source(cfg)
    loading.check_fits_in_memory(config, "--model_config" if cfg.model_config else flag)
    check_structure(cfg, config)
    tokenizer = load_tokenizer(cfg)
    pad_token_id = PAD_TOKEN_ID if is_gpt2(config) else padding_token(tokenizer, config, cfg)
    tokens, max_length = encode_splits(cfg, splits, tokenizer, context_size(config), log, pad_token_id)
    check_vocabulary(tokens, config.vocab_size, cfg, pad_token_id)
    return Inputs(splits, tokens, max_length, config, loading.resolve_device(cfg.device), pad_token_id)


class IndexDataset(torch.utils.data.Dataset):
    """Yields (example index, label): inputs are fetched per batch from tokens or from the cache."""

    def __init__(self, labels: list[int]):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return index, self.labels[index]


def make_loaders(splits: sms_spam.Splits, batch_size: int) -> dict[str, DataLoader]:
    def loader(name: str, train: bool) -> DataLoader:
        labels = [int(v) for v in getattr(splits, name)["Label"]]
        # Like the reference: the training loader shuffles and drops the last incomplete batch.
        return DataLoader(IndexDataset(labels), batch_size=batch_size, shuffle=train, drop_last=train)

    return {"train": loader("train", True), "validation": loader("validation", False), "test": loader("test", False)}


class Forward:
    """Class logits for a batch of example indices, from tokens or from cached activations."""

    def __init__(self, model: DecoderClassifier, tokens: dict, cache, device: torch.device, autocast_dtype):
        self.model, self.tokens, self.cache = model, tokens, cache
        self.device, self.autocast_dtype = device, autocast_dtype

    def __call__(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        ids = torch.stack([self.tokens[split][i] for i in indices.tolist()]).to(self.device)
        # Positions after the furthest one the pooling reads change nothing (causal mask; under an attention
        # mask, padding): run only up to it. The cache stores the same positions.
        ids = ids[:, :self.model.needed_length(ids)]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.cache is None:
                return self.model(ids).float()
            stored = self.cache.batch(split, indices).to(self.device)
            if self.cache.kind == "pooled":
                return self.model.head(stored).float()
            stored = stored[:, :ids.shape[1]]
            pooled = self.model.pooled_features(stored.to(self.model.head.weight.dtype), self.cache.start_stage, ids)
            return self.model.head(pooled).float()


# --- train and evaluate ---------------------------------------------------------------------------
def batch_loss(forward: Forward, split: str, batch, ignore_index: int, device) -> torch.Tensor:
    indices, labels = batch
    return F.cross_entropy(forward(split, indices), labels.to(device), ignore_index=ignore_index)


@torch.no_grad()
def mean_loss(forward, loader, split, num_batches, ignore_index, device) -> float:
    losses = [batch_loss(forward, split, batch, ignore_index, device).item()
              for _, batch in zip(range(num_batches), loader)]
    return sum(losses) / len(losses) if losses else float("nan")


@torch.no_grad()
def accuracy(forward, loader, split, device, num_batches: int | None = None, desc: str | None = None) -> float:
    correct = seen = 0
    batches = loader if num_batches is None else (b for _, b in zip(range(num_batches), loader))
    total = len(loader) if num_batches is None else min(num_batches, len(loader))
    for indices, labels in tqdm(batches, total=total, desc=desc, leave=False, disable=desc is None):
        predicted = forward(split, indices).argmax(dim=-1).cpu()
        correct += int((predicted == labels).sum())
        seen += len(labels)
    return correct / seen if seen else float("nan")


def train(cfg: ClassifyConfig, model, forward, loaders, device, log) -> dict:
    """The reference's training loop: AdamW, gradient accumulation, loss every `eval_freq` steps."""
    torch.manual_seed(cfg.seed)  # the reference reseeds before the optimizer (this also fixes data order)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates every tensor in one pass (benchmarks/bench_train_step.py measures it).
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    train_loader = loaders["train"]
    history = {"train_loss": [], "val_loss": [], "train_acc": [], "val_acc": []}
    examples_seen, global_step = 0, -1
    bar = tqdm(total=cfg.num_epochs * len(train_loader), desc="training", unit="batch")
    for epoch in range(cfg.num_epochs):
        model.train()
        for batch_index, batch in enumerate(train_loader):
            loss = batch_loss(forward, "train", batch, cfg.ignore_index, device) / cfg.accumulation_steps
            loss.backward()
            if (batch_index + 1) % cfg.accumulation_steps == 0 or batch_index + 1 == len(train_loader):
                optimizer.step()
                optimizer.zero_grad()
            examples_seen += len(batch[1])
            global_step += 1
            bar.update(1)
            if global_step % cfg.eval_freq == 0:
                model.eval()
                train_loss = mean_loss(forward, train_loader, "train", cfg.eval_iter, cfg.ignore_index, device)
                val_loss = mean_loss(forward, loaders["validation"], "validation", cfg.eval_iter, cfg.ignore_index, device)
                model.train()
                history["train_loss"].append(train_loss)
                history["val_loss"].append(val_loss)
                bar.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}")
                log.info(f"Ep {epoch + 1} (step {global_step:06d}): train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        model.eval()
        train_acc = accuracy(forward, train_loader, "train", device, cfg.eval_iter)
        val_acc = accuracy(forward, loaders["validation"], "validation", device, cfg.eval_iter)
        history["train_acc"].append(train_acc)
        history["val_acc"].append(val_acc)
        log.info(f"Ep {epoch + 1}: training accuracy {train_acc * 100:.2f}% | validation accuracy {val_acc * 100:.2f}%")
    bar.close()
    history["examples_seen"] = examples_seen
    return history


def run_config(cfg: ClassifyConfig) -> dict:
    """Train and evaluate one configuration; writes metrics.json last (and only on success).

    Every input is checked before anything is written. A finished run in --out is refused without
    --overwrite, and with it nothing is deleted: the new config.json and metrics.json replace the old
    ones (each atomically) once training and evaluation have succeeded. A run that fails after it
    started records the error at the end of run.log.
    """
    validate(cfg)
    out = prepare_run_folder(cfg.out, cfg.overwrite) if cfg.out is not None else None
    check_downloads(cfg)
    log = run_logger(out, "unfreeze.classify", hold=True)
    try:
        inputs = load_inputs(cfg, log)
        start_run_log(log, out)
        return _run(cfg, out, inputs, log)
    except BaseException as err:
        log_failure(log, err)
        raise
    finally:
        close_logger(log)


def _run(cfg: ClassifyConfig, out: Path | None, inputs: Inputs, log) -> dict:
    started = time.perf_counter()
    device, splits, tokens, max_length = inputs.device, inputs.splits, inputs.tokens, inputs.max_length
    num_classes = len(splits.class_names)  # the data decides: classes in sorted order
    autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
    replacing = out is not None and is_finished(out)  # --overwrite: the old config stays with its metrics
    if out is not None and not replacing:
        atomic_write_json(out / "config.json", to_dict(cfg))

    model, summary = build_trainable_model(cfg, inputs.config, inputs.pad_token_id, num_classes)
    model.to(device)
    log.info(f"data {splits.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
             + f"; max length {max_length}")
    log.info(f"trainable: {summary.trainable_params:,} of {summary.total_params:,} parameters "
             f"in {len(summary.tensors)} tensors ({cfg.trainable_layers})")
    if cfg.precision == "bf16" and (warning := frozen_prefix.slow_bf16_warning(device)):
        log.warning(warning)

    cache_build_s = 0.0
    cache, cache_info = None, {"kind": "none", "bytes": 0}
    if cfg.cache_activations != "off":
        cache, cache_info, cache_build_s = prepare_cache(cfg, model, tokens, device, autocast_dtype, log)
    forward = Forward(model, tokens, cache, device, autocast_dtype)
    loaders = make_loaders(splits, cfg.batch_size)

    train_started = time.perf_counter()
    history = train(cfg, model, forward, loaders, device, log)
    train_loop_s = time.perf_counter() - train_started
    # Training time counts the cache build too: it is work the uncached path does inside training.
    train_time_s = train_loop_s + cache_build_s

    model.eval()
    eval_started = time.perf_counter()
    scores = evaluate(forward, loaders, device, splits.class_names)
    final = {name: scores[name]["acc"] for name in SPLITS}
    eval_time_s = time.perf_counter() - eval_started
    metrics = {
        "train_acc": final["train"], "val_acc": final["validation"], "test_acc": final["test"],
        **score_metrics(scores, splits.class_names),
        "train_time_s": round(train_time_s, 3), "train_loop_s": round(train_loop_s, 3),
        "cache_build_s": round(cache_build_s, 3), "eval_time_s": round(eval_time_s, 3),
        "examples_per_s": round(history["examples_seen"] / train_time_s, 2) if train_time_s > 0 else None,
        "total_time_s": round(time.perf_counter() - started, 3),
        "device": str(device), "precision": cfg.precision,
        "attn_implementation": model.body.config._attn_implementation,  # sdpa, else eager (models/structure.py)
        "trainable_params": summary.trainable_params, "total_params": summary.total_params,
        "trainable_tensors": summary.tensors,
        "max_length": max_length, "n_train": len(splits.train), "n_val": len(splits.validation),
        "n_test": len(splits.test), "cache": cache_info, "history": history, "config": to_dict(cfg),
    }
    log.info(f"Training completed in {train_time_s / 60:.2f} minutes ({metrics['examples_per_s']} examples/s).")
    log.info(f"Training accuracy: {final['train'] * 100:.2f}% | Validation accuracy: {final['validation'] * 100:.2f}% "
             f"| Test accuracy: {final['test'] * 100:.2f}%")
    log.info(score_lines(scores, splits.class_names))
    if out is not None:
        atomic_write_json(out / "config.json", to_dict(cfg))
        atomic_write_json(out / "metrics.json", metrics)
        log.info(f"results written to {out / 'metrics.json'}")
    return metrics


def prepare_cache(cfg, model, tokens, device, autocast_dtype, log):
    """Cache the frozen prefix where that is exact and affordable (policy: `unfreeze.cache`)."""
    if cfg.feature_cache_dir:  # the shared on-disk cache: built once for every run that freezes this prefix
        cache, info, seconds = shared.prepare(model, tokens, cfg.feature_cache_dir, cfg.precision, device,
                                              max(cfg.batch_size, 16), log)
        if cache is not None:
            return cache, info, seconds
    request = CacheRequest(cfg.cache_activations, cfg.cache_budget_gb, "--cache_activations on", "--cache_budget_gb")
    return frozen_prefix.prepare(model, tokens, device, autocast_dtype, request, max(cfg.batch_size, 16), log)
