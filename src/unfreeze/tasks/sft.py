"""`unfreeze sft CONFIG [key=value ...] --out DIR`: pause-token supervised fine-tuning on GSM8K (seed 003).

One recipe, read top to bottom in `run_config`: setup (model with what trains, data, loaders, AdamW and
its linear schedule) -> fit (`tasks/sft_fit.py`: training with gradient accumulation, periodic validation)
-> save `<out>/final/` -> test (GSM8K accuracy by generation, when asked) -> `metrics.json`, written
atomically and last.

The same command runs on one device or under `accelerate launch --num_processes N ...`: `accelerate`
places the model, shards the batches and applies mixed precision.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from unfreeze.config import parse_args, to_dict
from unfreeze.errors import UsageError
from unfreeze.tasks import sft_resume, sft_setup
from unfreeze.tasks.sft_config import SFTConfig
from unfreeze.tasks.sft_fit import Setup, fit
from unfreeze.training.precision import Precision
from unfreeze.training.precision import resolve as resolve_precision

# --- command line -------------------------------------------------------------------------------------


def load_config(path: str, overrides: Sequence[str] = (), out: str | None = None) -> SFTConfig:
    """A YAML file, then `key=value` overrides, then `out`: exactly what `unfreeze sft PATH k=v --out DIR` reads."""
    argv = [path, *overrides, *(["--out", out] if out is not None else [])]
    return parse_args(SFTConfig, argv, prog="unfreeze sft", positional=("config",))


# --- the recipe ---------------------------------------------------------------------------------------


def run_config(config: SFTConfig) -> dict[str, Any]:
    """setup -> fit -> save -> test; returns the metrics (also <out>/metrics.json, written last, on success).

    A finished run in `out` (its metrics.json) is refused unless `overwrite`; then its metrics.json stays
    until the new one replaces it, and `final/` is swapped in whole (never half-written)."""
    from unfreeze.files import atomic_write_json, close_logger, log_failure, prepare_run_folder, run_logger

    _check_config(config)
    out = prepare_run_folder(config.out, config.overwrite)
    precision = resolve_precision(config.precision, config.dtype, config.mixed_precision)
    _reset_accelerate_state()  # a sweep runs many recipes in one process, each with its own settings
    accelerator = _accelerator(config, precision, out)
    main = accelerator.is_main_process
    resume_from = sft_resume.resume_point(config, out, accelerator.num_processes)
    accelerator.wait_for_everyone()  # every process has decided before old checkpoints may be removed
    log = run_logger(out if main else None, name="unfreeze.sft")
    if not main:
        log.setLevel("WARNING")
    try:
        if main:
            if resume_from is None:
                sft_resume.start_fresh(out, log)
            atomic_write_json(out / "config.json", to_dict(config))
        accelerator.wait_for_everyone()
        run = setup(config, accelerator, log, precision, resume_from)
        losses = fit(run, config, accelerator, log)
        metrics = _metrics(run, config, accelerator, losses, precision)
        final, test_file = save(run, config, accelerator, log), run.data.test_file
        del run  # the test generation needs the memory
        _free_memory(accelerator)
        if not main:
            return metrics  # the main process alone evaluates on test and writes the results
        metrics.update(test(config, final, out, test_file))
        atomic_write_json(out / "metrics.json", metrics)
        log.info(f"wrote {out / 'metrics.json'}")
        return metrics
    except BaseException as err:
        log_failure(log, err)  # run.log ends with what went wrong
        raise
    finally:
        close_logger(log)
        _reset_accelerate_state()


def setup(config: SFTConfig, accelerator: Any, log: Any, precision: Precision,
          resume_from: Path | None = None) -> Setup:
    """The model with exactly its trainable parts (in `precision`), the data, prepared loaders, AdamW and
    its schedule; with `resume_from`, everything that trains and the loop's position come from there."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from unfreeze.data import sft_data

    set_seed(config.seed)
    read = sft_setup.read_data(config, log)  # a wrong column fails here, before the (slow) model load
    model, trainable = sft_setup.trainable_model(config, log, precision.weights, precision.cast_everything)
    data = sft_setup.load_data(config, model, log, read)
    collate = sft_data.Collator(sft_data.pad_token_id(model.tokenizer))
    cache_info, cache_s = {"kind": "none", "bytes": 0}, 0.0
    if config.cache_activations != "off":
        cache_info, cache_s = _cache_hidden_states(config, model, data.train.examples + data.val.examples,
                                                   collate, accelerator, log)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(data.train.examples, batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, generator=generator)
    val_loader = DataLoader(data.val.examples, batch_size=config.eval_batch_size, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    total_steps = math.ceil(len(train_loader) / config.gradient_accumulation_steps) * config.num_epochs
    # Not passed to accelerate.prepare: a prepared scheduler steps once per process per optimizer step.
    scheduler = get_linear_schedule_with_warmup(optimizer.optimizer, config.warmup_steps, total_steps)
    run = Setup(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                val_loader=val_loader, params=params, generator=generator, total_steps=total_steps,
                trainable=trainable, data=data, cache_info=cache_info, cache_seconds=cache_s)
    sft_resume.make_resumable(run, accelerator, log, resume_from)
    if config.report_to != "none":
        accelerator.init_trackers("unfreeze-sft", config={k: v for k, v in to_dict(config).items() if v is not None})
    return run


def save(run: Setup, config: SFTConfig, accelerator: Any, log: Any) -> Path:
    """`<out>/final`: the trained model (LoRA merged when asked), written by the main process."""
    final = Path(config.out) / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        if config.merge_lora:
            unwrapped.merge_lora()
            log.info("merged the LoRA adapter into the weights")
        unwrapped.save_pretrained(final)
        log.info(f"saved the model to {final}")
    accelerator.wait_for_everyone()
    return final


def test(config: SFTConfig, final: Path, out: Path, test_file: Path | None) -> dict[str, Any]:
    """GSM8K test accuracy of the saved model by greedy generation, as `test_*` metrics (when `test: true`)."""
    if not config.test:
        return {}
    from unfreeze.tasks.eval_gsm8k import EvalConfig, evaluate_model_folder

    eval_config = EvalConfig(model=str(final), data=config.test_data or (str(test_file) if test_file else None),
                             limit=config.test_limit, batch_size=config.test_batch_size,
                             max_new_tokens=config.max_new_tokens, max_length=config.test_max_length, out=str(out),
                             prompt_template=config.prompt_template)
    # write_metrics=False: the evaluation's numbers go into this run's metrics.json, written last.
    results = evaluate_model_folder(eval_config, write_metrics=False)
    # Only the evaluation's results; its settings (model, device, batch size) are this run's config.
    settings = ("model", "device", "batch_size", "data", "limit", "max_new_tokens", "max_length", "pause_temperature",
                "prompt_template")
    return {key if key.startswith("test_") else f"test_{key}": value
            for key, value in results.items() if key not in settings}


# --- pieces -------------------------------------------------------------------------------------------


def _accelerator(config: SFTConfig, precision: Precision, out: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=precision.autocast,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(out),
        # Control-token rows take part in every forward, but frozen branches may not: be tolerant.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _metrics(run: Setup, config: SFTConfig, accelerator: Any, losses: dict[str, float],
             precision: Precision) -> dict[str, Any]:
    state, data, trainable = run.state, run.data, run.trainable
    # Building the cache is work the uncached path does inside training, so it counts as training time.
    train_time = state.train_seconds + run.cache_seconds
    metrics: dict[str, Any] = {f"initial_{k}": v for k, v in state.initial_losses.items()}
    metrics.update(losses)
    metrics.update({
        "train_time_s": round(train_time, 3), "optimizer_steps": state.step,
        "trainable_params": trainable.trainable_params, "total_params": trainable.total_params,
        "trainable_tensors": trainable.tensors, "trainable_components": trainable.components,
        "untied_embeddings": trainable.untied,
        "n_train": len(data.train.examples), "n_val": len(data.val.examples),
        "n_truncated": data.train.n_truncated + data.val.n_truncated,
        "n_dropped": data.train.n_dropped + data.val.n_dropped,
        "num_processes": accelerator.num_processes, "cache": run.cache_info,
        "examples_per_s": round(config.num_epochs * len(data.train.examples) / train_time, 2) if train_time else None,
        "train_history": state.train_history, "eval_history": state.eval_history,
        "resumed_from_step": state.resumed_from, "precision": precision.name,
        "kept_step": state.best["step"] if config.keep == "best" else state.step,
    })
    return metrics


def _free_memory(accelerator: Any) -> None:
    accelerator.free_memory()
    accelerator._custom_objects.clear()  # the LR schedule, registered for checkpoints, holds the optimizer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cache_hidden_states(config: SFTConfig, model: Any, examples: list, collate: Any, accelerator: Any,
                         log: Any) -> tuple[dict[str, Any], float]:
    """Store each example's final hidden states when that is exact and fits the budget (`unfreeze.cache`)."""
    from unfreeze.cache import final_hidden
    from unfreeze.cache.policy import CacheRequest

    request = CacheRequest(config.cache_activations, config.cache_budget_gb, "cache_activations=on", "cache_budget_gb")
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else model.hf_model.dtype
    return final_hidden.prepare(model, examples, collate, request, device=accelerator.device,
                                autocast=accelerator.autocast, dtype=dtype, batch_size=config.eval_batch_size, log=log)


def _check_config(config: SFTConfig) -> None:
    """Problems that can be named before anything heavy is loaded."""
    if not config.out:
        raise UsageError("no run folder: pass --out DIR (or set `out` in the config)")
    if not config.data:
        raise UsageError("no data: set `data` to a folder from `unfreeze inject-pauses` or a GSM8K folder")
    for key in ("num_epochs", "batch_size", "gradient_accumulation_steps", "max_length", "eval_batch_size",
                "log_every", "lora_r"):
        if getattr(config, key) < 1:
            raise UsageError(f"{key} must be at least 1, got {getattr(config, key)}")
    for key in ("eval_every", "save_steps"):
        if getattr(config, key) < 0:
            raise UsageError(f"{key} must be 0 (off) or positive, got {getattr(config, key)}")
    if config.save_total_limit < 1:
        raise UsageError(f"save_total_limit must be at least 1, got {config.save_total_limit}")
    if not config.lr > 0 or config.weight_decay < 0:
        raise UsageError(f"lr must be positive and weight_decay at least 0 (got lr={config.lr}, "
                         f"weight_decay={config.weight_decay})")
    from unfreeze.data.sft_data import check_template
    from unfreeze.models.gguf import is_gguf, split_source

    check_template(config.prompt_template)
    sft_setup.completion_column(config)  # two keys naming different columns
    if is_gguf(config.model):
        split_source(config.model, "model")  # a missing file or the missing gguf package, before any work
        if config.weights == "random":
            raise UsageError(f"model {config.model}: weights=random needs a hub id or model folder for the "
                             f"architecture, not a .gguf file; use weights=pretrained")
    if not config.pause_token:
        on = [key for key in ("unfreeze_pause_embedding", "unfreeze_pause_head") if getattr(config, key)]
        if on:
            raise UsageError(f"{', '.join(on)} need a control token, but pause_token is null")
    resolve_precision(config.precision, config.dtype, config.mixed_precision)  # contradictions are errors
    if config.merge_lora and not config.lora:
        raise UsageError("merge_lora: true needs lora: true")
    if config.report_to != "none":
        from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

        available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                     "mlflow": is_mlflow_available}[config.report_to]()
        if not available:
            raise UsageError(f"report_to={config.report_to} needs `pip install {config.report_to}`")
    if config.test:
        try:
            from unfreeze.tasks.eval_gsm8k import evaluate_model_folder  # noqa: F401
        except ImportError as err:
            raise UsageError(f"test: true needs the GSM8K evaluation (unfreeze.tasks.eval_gsm8k): {err}") from None


def _reset_accelerate_state() -> None:
    """Forget the previous recipe's accelerate settings (mixed precision, accumulation); keeps the
    process group of a distributed launch (PartialState)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
