"""`unfreeze classify`: which parameters to train, for a decoder model (GPT-2 by default) on labelled text.

    check the options -> (run folder, downloads, lock, log) -> inputs: data, tokens, model config
    -> setup: the classifier with exactly what trains, the frozen-prefix cache -> train (the one loop,
    `training.loop.ClassifierTraining`) -> evaluate every split -> metrics.json, last.

The semantics follow the reference script `additional_experiments.py` (LLMs-from-scratch ch06);
where we deviate, the comment says so and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from unfreeze.cache import memory, shared
from unfreeze.cache.policy import CacheRequest
from unfreeze.config import to_dict
from unfreeze.lifecycle import Run, Tracking, run_folder
from unfreeze.offline import require_downloads
from unfreeze.resources import peak_memory, reset_peak_memory
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.classify.evaluate import evaluate, prediction_rows, score_lines, score_metrics
from unfreeze.recipes.classify.inputs import Inputs, downloads, load_inputs, validate
from unfreeze.recipes.classify.outputs import save_outputs
from unfreeze.models.model_config import enable_activation_checkpointing
from unfreeze.models.trainable import TrainableSummary
from unfreeze.recipes.classify.model import build_trainable_model
from unfreeze.training.loop import ClassifierInputs, ClassifierTraining, Schedule


PREDICTIONS = "predictions.jsonl"  # the validation and test examples with the run's predictions


def check(cfg: ClassifyConfig, log=None) -> tuple[ClassifyConfig, Inputs]:
    """Everything a run checks before its work (`unfreeze sweep` calls it for every row first): the options
    (returned in their canonical spelling) and the inputs they name."""
    import logging

    cfg = validate(cfg)
    require_downloads(downloads(cfg))
    return cfg, load_inputs(cfg, log or logging.getLogger("unfreeze.classify.check"))


def run(cfg: ClassifyConfig) -> dict:
    """Train and evaluate one configuration; returns the metrics (also <out>/metrics.json, written last)."""
    cfg = validate(cfg)
    with run_folder("classify", cfg.out, cfg.overwrite, downloads=downloads(cfg), tracking=Tracking.of(cfg)) as folder:
        inputs = load_inputs(cfg, folder.log)
        folder.start(to_dict(cfg))
        metrics = train_and_evaluate(cfg, inputs, folder)
        folder.finish(metrics, to_dict(cfg))
        return metrics


def schedule(cfg: ClassifyConfig) -> Schedule:
    return Schedule(num_epochs=cfg.num_epochs, batch_size=cfg.batch_size, accumulation_steps=cfg.accumulation_steps,
                    lr=cfg.lr, weight_decay=cfg.weight_decay, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                    ignore_index=cfg.ignore_index, seed=cfg.seed)


def autocast_dtype(cfg: ClassifyConfig) -> torch.dtype | None:
    """bf16-mixed (also spelled bf16): bf16 autocast over fp32 weights; fp32: none."""
    return None if cfg.precision == "fp32" else torch.bfloat16


@dataclass
class Training:
    """A classify run set up: the classifier with exactly what trains, and its loop over the chosen inputs."""

    model: torch.nn.Module
    summary: TrainableSummary
    loop: ClassifierTraining
    cache_info: dict
    cache_build_s: float


def setup(cfg: ClassifyConfig, inputs: Inputs, log, record=None) -> Training:
    """The classifier (`--trainable_layers` applied), the frozen-prefix cache, and the training loop (which hands
    its periodic losses and accuracies to `record`, the run's tracker)."""
    device = inputs.device
    model, summary = build_trainable_model(cfg, inputs.source, inputs.config, inputs.pad_token_id,
                                           len(inputs.splits.class_names))  # classes in sorted order
    model.to(device)
    if cfg.gradient_checkpointing:  # the blocks that train recompute their activations in backward
        enable_activation_checkpointing(model.body)
    log.info(f"trainable: {summary.trainable_params:,} of {summary.total_params:,} parameters "
             f"in {len(summary.tensors)} tensors ({cfg.trainable_layers})")
    if autocast_dtype(cfg) is not None and (warning := memory.slow_bf16_warning(device)):
        log.warning(warning)
    reader, cache_info, cache_build_s = None, {"kind": "none", "bytes": 0}, 0.0
    if cfg.cache_activations != "off":
        reader, cache_info, cache_build_s = prepare_cache(cfg, model, inputs.tokens, device, log)
    inputs_of = ClassifierInputs(model, inputs.tokens, reader, device, autocast_dtype(cfg))
    loop = ClassifierTraining(model, inputs_of, inputs.labels, schedule(cfg), device, log=log, progress=True,
                              record=record)
    return Training(model, summary, loop, cache_info, cache_build_s)


def train_and_evaluate(cfg: ClassifyConfig, inputs: Inputs, folder: Run) -> dict:
    started, log, splits = time.perf_counter(), folder.log, inputs.splits
    log.info(f"data {splits.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
             + f"; max length {inputs.max_length}")
    reset_peak_memory(inputs.device)
    training = setup(cfg, inputs, log, record=folder.track)
    train_started = time.perf_counter()
    training.loop.advance()
    train_loop_s = time.perf_counter() - train_started
    # Training time counts the cache build too: it is work the uncached path does inside training.
    train_time_s = train_loop_s + training.cache_build_s

    eval_started = time.perf_counter()
    scores, predicted = evaluate(training.loop, splits.class_names)
    eval_time_s = time.perf_counter() - eval_started
    history, summary = training.loop.history, training.summary
    metrics = {
        "train_acc": scores["train"]["acc"], "val_acc": scores["validation"]["acc"], "test_acc": scores["test"]["acc"],
        **score_metrics(scores, splits.class_names),
        "train_time_s": round(train_time_s, 3), "train_loop_s": round(train_loop_s, 3),
        "cache_build_s": round(training.cache_build_s, 3), "eval_time_s": round(eval_time_s, 3),
        "examples_per_s": round(history["examples_seen"] / train_time_s, 2) if train_time_s > 0 else None,
        "total_time_s": round(time.perf_counter() - started, 3),
        "device": str(inputs.device), "precision": cfg.precision,
        # sdpa, else eager: what the architecture supports (models/structure.py)
        "attn_implementation": training.model.body.config._attn_implementation,
        "trainable_params": summary.trainable_params, "total_params": summary.total_params,
        "trainable_tensors": summary.tensors,
        "max_length": inputs.max_length, "n_train": len(splits.train), "n_val": len(splits.validation),
        "n_test": len(splits.test), "cache": training.cache_info, "history": history, "config": to_dict(cfg),
        **peak_memory(inputs.device),
    }
    log.info(f"Training completed in {train_time_s / 60:.2f} minutes ({metrics['examples_per_s']} examples/s).")
    log.info(f"Training accuracy: {scores['train']['acc'] * 100:.2f}% | Validation accuracy: "
             f"{scores['validation']['acc'] * 100:.2f}% | Test accuracy: {scores['test']['acc'] * 100:.2f}%")
    log.info(score_lines(scores, splits.class_names))
    if folder.out is not None:  # what the report links as the run's predictions
        folder.write_jsonl(PREDICTIONS, prediction_rows(splits, predicted, splits.class_names))
        metrics["predictions_file"] = PREDICTIONS
    metrics.update(save_outputs(cfg, inputs, training.model, summary, metrics, log))  # final/, --export DIR
    return metrics


def prepare_cache(cfg: ClassifyConfig, model, tokens, device, log):
    """Cache the frozen prefix where that is exact and affordable (policy: `unfreeze.cache`).

    Returns (the cache's reader or None, metrics.json's `cache` entry, the build's seconds)."""
    if cfg.feature_cache_dir:  # the shared on-disk cache: built once for every run that freezes this prefix
        reader, info, seconds = shared.prepare(model, tokens, cfg.feature_cache_dir, cfg.precision, device,
                                               max(cfg.batch_size, 16), log)
        if reader is not None:
            return reader, info, seconds
    request = CacheRequest(cfg.cache_activations, cfg.cache_budget_gb, "--cache_activations on", "--cache_budget_gb")
    return memory.prepare(model, tokens, device, autocast_dtype(cfg), request, max(cfg.batch_size, 16), log)

