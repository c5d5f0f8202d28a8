"""`unfreeze sft CONFIG [key=value ...] --out DIR`: pause-token supervised fine-tuning on GSM8K (seed 003).

One recipe, read top to bottom in `run`: check -> (run folder, downloads, lock, log) -> setup (model with
what trains, data, loaders, AdamW and its linear schedule) -> train (the one SFT loop,
`training.sft_loop.SFTTraining`: gradient accumulation, periodic validation, checkpoints) -> save
`<out>/final/` -> test (GSM8K accuracy by generation, when asked) -> `metrics.json`, written atomically and
last.

The same command runs on one device or under `accelerate launch --num_processes N ...`: `accelerate`
places the model, shards the batches and reduces across processes.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from unfreeze.config import parse_args, to_dict
from unfreeze.errors import UsageError
from unfreeze.lifecycle import Run, Tracking, run_folder
from unfreeze.offline import require_downloads
from unfreeze.resources import peak_memory, reset_peak_memory
from unfreeze.recipes.sft import outputs as sft_outputs
from unfreeze.tracking import check_tracker
from unfreeze.recipes.sft import resume as sft_resume
from unfreeze.recipes.sft import setup as sft_setup
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.training.precision import Precision
from unfreeze.training.precision import resolve as resolve_precision
from unfreeze.training.sft_loop import Setup, SFTSchedule, SFTTraining

# --- command line -------------------------------------------------------------------------------------


def load_config(path: str, overrides: Sequence[str] = (), out: str | None = None) -> SFTConfig:
    """A YAML file, then `key=value` overrides, then `out`: exactly what `unfreeze sft PATH k=v --out DIR` reads."""
    argv = [path, *overrides, *(["--out", out] if out is not None else [])]
    return parse_args(SFTConfig, argv, prog="unfreeze sft", positional=("config",))


# --- the recipe ---------------------------------------------------------------------------------------


def check(config: SFTConfig, model_from_dependency: bool = False) -> None:
    """Everything a run checks before its work (`unfreeze sweep` calls it for every row first): the options,
    the downloads, and the data (read and checked; the model is not loaded). `model_from_dependency`: the
    model is another run's output, not there yet, so it is not checked."""
    import logging

    check_config(config, check_model=not model_from_dependency)
    if not model_from_dependency and not _saved_folder(config):
        require_downloads(sft_setup.model_source(config).downloads())
    sft_setup.read_data(config, logging.getLogger("unfreeze.sft.check"))


def run(config: SFTConfig) -> dict[str, Any]:
    """setup -> fit -> save -> test; returns the metrics (also <out>/metrics.json, written last, on success).

    A finished run in `out` (its metrics.json) is refused unless `overwrite`; then its metrics.json stays
    until the new one replaces it, and `final/` is swapped in whole (never half-written)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    check_config(config)
    precision = resolve_precision(config.precision)
    # The process group (one process, or `accelerate launch`'s), made as the accelerator would make it.
    main = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).is_main_process
    downloads = sft_setup.model_source(config).downloads() if not _saved_folder(config) else []
    with run_folder("sft", config.out, config.overwrite, downloads=downloads, main_process=main,
                    tracking=Tracking.of(config)) as folder:
        out, log = Path(config.out), folder.log
        read = sft_setup.read_data(config, log)  # a wrong column fails here, before anything is written
        metrics, final, test_file = train_and_save(config, precision, out, folder, read)
        _free_memory()  # the test generation needs the memory the training held
        if not main:
            return metrics  # the main process alone evaluates on test and writes the results
        metrics.update(test(config, final, folder, test_file))
        folder.finish(metrics, to_dict(config))
        return metrics


def train_and_save(config: SFTConfig, precision: Precision, out: Path, folder: Run, read) -> tuple[dict, Path, Any]:
    """Everything that needs the accelerator: resume point, setup, the loop, the saved model. The accelerator
    and the run's objects are released when this returns (the test generation needs the memory)."""
    accelerator = accelerator_for(config, out)
    log, main = folder.log, accelerator.is_main_process
    resume_from = sft_resume.resume_point(config, out, accelerator.num_processes)
    # The model and data are built and checked before anything is written (bad input leaves no trace).
    reset_peak_memory(accelerator.device)
    run = setup(config, accelerator, log, precision, resume_from, read)
    accelerator.wait_for_everyone()  # every process has decided before old checkpoints may be removed
    if main:
        folder.start(to_dict(config))  # (a resumed run's config.json is the same: only neutral keys may differ)
        if resume_from is None:
            sft_resume.start_fresh(out, log)
    accelerator.wait_for_everyone()
    loop = SFTTraining(run, schedule(config), accelerator, log,
                       checkpoint=lambda: sft_resume.save_checkpoint(run, config, accelerator, log), record=folder.track)
    loop.advance()
    losses = loop.finish()
    metrics = {**_metrics(run, config, accelerator, losses, precision), **peak_memory(accelerator.device)}
    final = save(run, config, accelerator, log, metrics)
    accelerator.free_memory()
    return metrics, final, run.data.test_file


def schedule(config: SFTConfig) -> SFTSchedule:
    return SFTSchedule(num_epochs=config.num_epochs, batch_size=config.batch_size,
                       accumulation_steps=config.accumulation_steps, max_grad_norm=config.max_grad_norm,
                       log_every=config.log_every, eval_every=config.eval_every, eval_at_start=config.eval_at_start,
                       keep=config.keep, save_steps=config.save_steps)


def setup(config: SFTConfig, accelerator: Any, log: Any, precision: Precision,
          resume_from: Path | None = None, read=None) -> Setup:
    """The model with exactly its trainable parts (in `precision`), the data, prepared loaders, AdamW and
    its schedule; with `resume_from`, everything that trains and the loop's position come from there."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from unfreeze.data import sft_data

    set_seed(config.seed)
    read = read or sft_setup.read_data(config, log)  # a wrong column fails here, before the (slow) model load
    model, trainable = sft_setup.trainable_model(config, log, precision)
    data = sft_setup.load_data(config, model, log, read)
    collate = sft_data.Collator(sft_data.pad_token_id(model.tokenizer))
    cache_info, cache_s = {"kind": "none", "bytes": 0}, 0.0
    if config.cache_activations != "off":
        cache_info, cache_s = _cache_hidden_states(config, model, data, collate.pad_id, accelerator, precision, log)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(data.train.examples, batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, generator=generator)
    val_loader = DataLoader(data.val.examples, batch_size=config.eval_batch_size, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates every tensor in one pass where torch has it (CUDA; CPU since 2.4).
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type == "cuda" or None)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    total_steps = math.ceil(len(train_loader) / config.accumulation_steps) * config.num_epochs
    # Not passed to accelerate.prepare: a prepared scheduler steps once per process per optimizer step.
    scheduler = get_linear_schedule_with_warmup(optimizer.optimizer, config.warmup_steps, total_steps)
    run = Setup(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                val_loader=val_loader, params=params, generator=generator, total_steps=total_steps,
                trainable=trainable, data=data, cache_info=cache_info, cache_seconds=cache_s, precision=precision)
    sft_resume.make_resumable(run, accelerator, log, resume_from)
    return run


def save(run: Setup, config: SFTConfig, accelerator: Any, log: Any, metrics: dict | None = None) -> Path:
    """`<out>/final`: the trained model (LoRA merged when asked) with its model card, written by the main process;
    with `export`, what trained in other stacks' forms."""
    final = Path(config.out) / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        record = sft_outputs.export(config, unwrapped, run.trainable, log)  # before a merge: the LoRA trained
        if config.merge_lora:
            unwrapped.merge_lora()
            log.info("merged the LoRA adapter into the weights")
        unwrapped.save_pretrained(final, card=sft_outputs.card(config, unwrapped, run.trainable, metrics or {}))
        log.info(f"saved the model to {final}")
        if record is not None and metrics is not None:
            metrics["export"] = {"dir": config.export, **record}
    accelerator.wait_for_everyone()
    return final


def test(config: SFTConfig, final: Path, folder: Run, test_file: Path | None) -> dict[str, Any]:
    """GSM8K test accuracy of the saved model by greedy generation, as `test_*` metrics (when `test: true`);
    the per-question records go to this run's test_results.json."""
    if not config.test:
        return {}
    from unfreeze.recipes.eval_gsm8k.recipe import RESULTS_FILE, EvalConfig, evaluate

    eval_config = EvalConfig(model=str(final), data=config.test_data or (str(test_file) if test_file else None),
                             limit=config.test_limit, batch_size=config.test_batch_size,
                             max_new_tokens=config.max_new_tokens, max_length=config.test_max_length,
                             out=config.out, prompt_template=config.prompt_template)
    records, results = evaluate(eval_config, folder)
    folder.write_json(RESULTS_FILE, records)
    # Only the evaluation's results; its settings (model, device, batch size) are this run's config.
    settings = ("model", "device", "batch_size", "data", "limit", "max_new_tokens", "max_length", "pause_temperature",
                "prompt_template")
    return {key if key.startswith("test_") else f"test_{key}": value
            for key, value in results.items() if key not in settings}


# --- pieces -------------------------------------------------------------------------------------------


def accelerator_for(config: SFTConfig, out: Path) -> Any:
    """One run's accelerator. Mixed precision is this run's own autocast (`training.precision`), so every
    accelerator of a process (a sweep runs many recipes in one) is made with the same settings."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        gradient_accumulation_steps=config.accumulation_steps,
        mixed_precision="no",
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
        "attn_implementation": accelerator.unwrap_model(run.model).hf_model.config._attn_implementation,
        "kept_step": state.best["step"] if config.keep == "best" else state.step,
    })
    return metrics


def _free_memory() -> None:
    gc.collect()  # the accelerator, model and optimizer of `train_and_save` are gone once it returned
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cache_hidden_states(config: SFTConfig, model: Any, data: Any, pad_id: int, accelerator: Any,
                         precision: Precision, log: Any) -> tuple[dict[str, Any], float]:
    """Store each example's states where everything that trains begins, when that is exact and fits the budget
    (`unfreeze.cache.sft_prefix`); with `feature_cache_dir`, in the shared disk store (the main process builds it
    first, the others read it)."""
    from unfreeze.cache import sft_prefix
    from unfreeze.cache.policy import CacheRequest

    request = CacheRequest(config.cache_activations, config.cache_budget_gb, "cache_activations=on", "cache_budget_gb")
    dtype = precision.autocast_dtype or model.hf_model.dtype
    splits = {"train": data.train.examples, "validation": data.val.examples}
    with accelerator.main_process_first():
        return sft_prefix.prepare(model, splits, pad_id, request, device=accelerator.device,
                                  autocast_dtype=precision.autocast_dtype, dtype=dtype, precision=precision.name,
                                  batch_size=config.eval_batch_size, log=log, cache_dir=config.feature_cache_dir,
                                  disk_budget_gb=config.feature_cache_budget_gb)


def model_config_of(config: SFTConfig) -> Any:
    """The architecture of `model` (a saved pause-model folder's own config.json), read without weights."""
    if _saved_folder(config):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(Path(config.model).expanduser()))
    return sft_setup.model_source(config).config()


def _saved_folder(config: SFTConfig) -> bool:
    """`model` is a saved pause-model folder (`<out>/final` of an earlier run): it brings its own weights."""
    from unfreeze.models.control.tokens import MARKER_FILE

    return (Path(config.model).expanduser() / MARKER_FILE).is_file()


def check_config(config: SFTConfig, check_model: bool = True) -> None:
    """Problems that can be named before anything heavy is loaded."""
    if not config.out:
        raise UsageError("no run folder: pass --out DIR (or set `out` in the config)")
    if config.export is not None:
        from unfreeze.files import check_output_path

        check_output_path(config.export, "export")
    if not config.data:
        raise UsageError("no data: set `data` to a folder from `unfreeze inject-pauses` or a GSM8K folder")
    for key in ("num_epochs", "batch_size", "accumulation_steps", "max_length", "eval_batch_size",
                "log_every", "lora_rank"):
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
    check_template(config.prompt_template)
    sft_setup.completion_column(config)  # two keys naming different columns
    if not config.pause_token:
        on = [key for key in ("unfreeze_pause_embedding", "unfreeze_pause_head") if getattr(config, key)]
        if on:
            raise UsageError(f"{', '.join(on)} need a control token, but pause_token is null")
    if check_model and not _saved_folder(config):
        sft_setup.model_source(config).check()
    sft_setup.check_choice(config, (lambda: model_config_of(config)) if check_model else None)
    if config.merge_lora and not (config.lora or any(term.lora for term in sft_setup.choice_terms(config))):
        raise UsageError("merge_lora: true needs lora: true (or a lora word in trainable_layers)")
    check_tracker(config.report_to, "report_to")


