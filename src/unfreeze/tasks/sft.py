"""`unfreeze sft CONFIG [key=value ...] --out DIR`: pause-token supervised fine-tuning on GSM8K (seed 003).

One recipe, top to bottom: setup (config, accelerator, model, what trains, data) -> train (AdamW, linear
schedule, gradient accumulation, periodic validation) -> save `<out>/final/` -> evaluate (validation
losses, optionally GSM8K test accuracy) -> `metrics.json`, written atomically and last.

The same command runs on one device or under `accelerate launch --num_processes N ...`: `accelerate`
places the model, shards the batches and applies mixed precision.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from unfreeze.config import parse_args, to_dict
from unfreeze.errors import UsageError
from unfreeze.tasks.sft_config import COMPONENT_SWITCHES, SFTConfig

# --- command line -------------------------------------------------------------------------------------


def load_config(path: str, overrides: Sequence[str] = (), out: str | None = None) -> SFTConfig:
    """A YAML file, then `key=value` overrides, then `out`: exactly what `unfreeze sft PATH k=v --out DIR` reads."""
    argv = [path, *overrides, *(["--out", out] if out is not None else [])]
    return parse_args(SFTConfig, argv, prog="unfreeze sft", positional=("config",))


# --- the recipe ---------------------------------------------------------------------------------------


def run_config(config: SFTConfig) -> dict[str, Any]:
    """Train, save, evaluate; returns the metrics (also written to <out>/metrics.json on success)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from unfreeze.files import atomic_write_json, close_logger, run_logger

    _check_config(config)
    out = Path(config.out)
    _reset_accelerate_state()  # a sweep runs many recipes in one process, each with its own settings
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(out),
        # Control-token rows take part in every forward, but frozen branches may not: be tolerant.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # a stale result must not outlive a failed rerun
        atomic_write_json(out / "config.json", to_dict(config))
    log = run_logger(out if main else None, name="unfreeze.sft")
    if not main:
        log.setLevel("WARNING")
    try:
        return _train_and_evaluate(config, accelerator, log, out)
    finally:
        close_logger(log)
        _reset_accelerate_state()


def _train_and_evaluate(config: SFTConfig, accelerator: Any, log: Any, out: Path) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from unfreeze.data import sft_data
    from unfreeze.files import atomic_write_json
    # apply_components: the switched-on components -> their parameters -> requires_grad, with the summary
    from unfreeze.models.trainable import apply_components as set_trainable

    main = accelerator.is_main_process
    set_seed(config.seed)
    # --- setup: model, what trains, data --------------------------------------------------------------
    model = build_model(config, log)
    positions = getattr(model.config, "n_positions", None)  # GPT-2's learned positions are a hard limit
    if positions is not None and config.max_length > positions:
        raise UsageError(f"max_length={config.max_length} exceeds the model's {positions} positions")
    if config.dropout is not None:
        from unfreeze.cache.dropout import set_dropout

        set_dropout(model.hf_model, config.dropout)
    components = [name for name, key in COMPONENT_SWITCHES.items() if getattr(config, key)]
    trainable = set_trainable(model, components)
    for line in trainable.lines():
        log.info(line)
    if config.gradient_checkpointing:
        model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    train_file, test_file = sft_data.data_files(config.data)
    rows = sft_data.read_rows(train_file, config.answer_field)
    if config.train_limit is not None:
        rows = rows[: config.train_limit]
    _check_pauses(config, rows, train_file, log)
    train_rows, val_rows = sft_data.split_train_val(rows, config.val_fraction, config.seed)
    train_set = sft_data.encode_rows(model.tokenizer, train_rows, config.max_length, model.control_tokens)
    val_set = sft_data.encode_rows(model.tokenizer, val_rows, config.max_length, model.control_tokens)
    for name, encoded, n_rows in (("train", train_set, len(train_rows)), ("validation", val_set, len(val_rows))):
        if encoded.n_truncated:
            dropped = f"; {encoded.n_dropped} lost every answer token and were dropped" if encoded.n_dropped else ""
            log.warning(f"warning: {encoded.n_truncated} of {n_rows} {name} examples are longer than "
                        f"max_length={config.max_length} tokens and were cut{dropped}")
    if not train_set.examples or not val_set.examples:
        raise UsageError(f"no training or validation examples left (max_length={config.max_length} too small?)")
    log.info(f"data: {train_file} -> {len(train_set.examples)} train / {len(val_set.examples)} validation examples")

    collate = sft_data.Collator(sft_data.pad_token_id(model.tokenizer))
    cache_info, cache_s = {"kind": "none", "bytes": 0}, 0.0
    if config.cache_activations != "off":
        cache_info, cache_s = _cache_hidden_states(config, model, train_set.examples + val_set.examples,
                                                   collate, accelerator, log)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set.examples, batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, generator=generator)
    val_loader = DataLoader(val_set.examples, batch_size=config.eval_batch_size, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.num_epochs
    # Not passed to accelerate.prepare: a prepared scheduler steps once per process per optimizer step.
    scheduler = get_linear_schedule_with_warmup(optimizer.optimizer, config.warmup_steps, total_steps)
    if config.report_to != "none":
        accelerator.init_trackers("unfreeze-sft", config={k: v for k, v in to_dict(config).items() if v is not None})

    metrics: dict[str, Any] = {}
    if config.eval_at_start:
        start = evaluate(model, val_loader, accelerator)
        metrics.update({f"initial_{k}": v for k, v in start.items()})
        log.info(_format_losses("before training", start))
        accelerator.log(start, step=0)

    # --- train ----------------------------------------------------------------------------------------
    log.info(f"training: {config.num_epochs} epoch(s), {total_steps} optimizer steps of {config.batch_size} "
             f"examples x {config.gradient_accumulation_steps} accumulation x {accelerator.num_processes} process(es)")
    progress = tqdm(total=total_steps, desc="sft", disable=not accelerator.is_local_main_process)
    step, running, started = 0, [], time.perf_counter()
    model.train()
    for _epoch in range(config.num_epochs):
        for batch in train_loader:
            with accelerator.accumulate(model):
                output = model(**batch, return_logprobs=False)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            # kept on the device; read (one sync) only when logging
            running.append(torch.stack([output.loss, output.lm_loss, output.pause_loss]).detach())
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == total_steps:
                loss, lm_loss, pause_loss = torch.stack(running).mean(0).tolist()
                running = []
                progress.set_postfix(loss=f"{loss:.4f}")
                accelerator.log({"train_loss": loss, "train_lm_loss": lm_loss, "train_pause_loss": pause_loss,
                                 "lr": scheduler.get_last_lr()[0]}, step=step)
                log.info(f"step {step}/{total_steps}: train loss {loss:.4f} (lm {lm_loss:.4f}, pause {pause_loss:.4f})")
            if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                losses = evaluate(model, val_loader, accelerator)
                accelerator.log(losses, step=step)
                log.info(_format_losses(f"step {step}", losses))
    progress.close()
    # Building the cache is work the uncached path does inside training, so it counts as training time.
    train_time = time.perf_counter() - started + cache_s

    # --- evaluate on validation, save -----------------------------------------------------------------
    final_losses = evaluate(model, val_loader, accelerator)
    accelerator.log(final_losses, step=step)
    log.info(_format_losses("after training", final_losses))
    for tracker in accelerator.trackers:
        tracker.finish()
    metrics.update(final_losses)
    metrics.update({
        "train_time_s": round(train_time, 3), "optimizer_steps": step,
        "trainable_params": trainable.trainable_params, "total_params": trainable.total_params,
        "trainable_tensors": trainable.tensors, "trainable_components": trainable.components,
        "untied_embeddings": trainable.untied,
        "n_train": len(train_set.examples), "n_val": len(val_set.examples),
        "n_truncated": train_set.n_truncated + val_set.n_truncated,
        "n_dropped": train_set.n_dropped + val_set.n_dropped,
        "num_processes": accelerator.num_processes, "cache": cache_info,
        "examples_per_s": round(config.num_epochs * len(train_set.examples) / train_time, 2) if train_time else None,
    })
    accelerator.wait_for_everyone()
    final = out / "final"
    if main:
        unwrapped = accelerator.unwrap_model(model)
        if config.merge_lora:
            unwrapped.merge_lora()
            log.info("merged the LoRA adapter into the weights")
        unwrapped.save_pretrained(final)
        log.info(f"saved the model to {final}")
    accelerator.wait_for_everyone()
    del model, optimizer, train_loader, val_loader, params
    accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not main:
        return metrics  # the main process alone evaluates on test and writes the results

    # --- GSM8K test accuracy (generation), then metrics.json last --------------------------------------
    if config.test:
        from unfreeze.tasks.eval_gsm8k import evaluate_model_folder

        test_path = config.test_data or (str(test_file) if test_file else None)
        # write_metrics=False: the evaluation's numbers go into this run's metrics.json, written last.
        results = evaluate_model_folder(str(final), test_path, str(out), config.test_limit,
                                        config.test_batch_size, config.max_new_tokens, write_metrics=False)
        # Only the evaluation's results; its settings (model, device, batch size) are this run's config.
        for key, value in results.items():
            if key in ("model", "device", "batch_size", "data", "limit", "max_new_tokens", "pause_temperature"):
                continue
            metrics[key if key.startswith("test_") else f"test_{key}"] = value
    atomic_write_json(out / "metrics.json", metrics)
    log.info(f"wrote {out / 'metrics.json'}")
    return metrics


# --- pieces -------------------------------------------------------------------------------------------


def build_model(config: SFTConfig, log: Any):
    """The model to train: a saved pause-model folder, or a HF model (pretrained or random) + control tokens."""
    from unfreeze.models.control_tokens import MARKER_FILE, ControlTokenLM, load_causal_lm
    from unfreeze.models.loading import load_tokenizer, parse_model_config

    tokens = [config.pause_token] if config.pause_token else []
    folder = Path(config.model).expanduser()
    if folder.is_dir() and (folder / MARKER_FILE).exists():
        if config.weights == "random" or config.model_config or config.tokenizer:
            raise UsageError(f"model {config.model} is a saved model folder; it brings its own weights and "
                             f"tokenizer (unset weights=random, model_config, tokenizer)")
        # A saved LoRA adapter is merged: this run trains from the weights that folder represents.
        model = ControlTokenLM.from_pretrained(str(folder), dtype=config.dtype, merge_adapter=True)
        if model.control_tokens and model.control_tokens != tokens:
            raise UsageError(f"model {config.model} has control tokens {model.control_tokens}; "
                             f"set pause_token to {model.control_tokens[0]!r}")
        if not model.control_tokens and tokens:
            model = ControlTokenLM.from_base(model.base, model.tokenizer, tokens, config.detach_head)
        model.detach_head = config.detach_head
        log.info(f"model: {config.model} (saved folder; control tokens {model.control_tokens or 'none'})")
    else:
        overrides = parse_model_config(config.model_config, flag="model_config")
        random_init = config.weights == "random"
        tokenizer = load_tokenizer(config.tokenizer or config.model, flag="tokenizer") if random_init else None
        if random_init:
            # A random model is built for its tokenizer: same vocabulary size and special ids.
            overrides = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id, **overrides}
        base = load_causal_lm(config.model, dtype=config.dtype, random_init=random_init, overrides=overrides)
        tokenizer = tokenizer or load_tokenizer(config.tokenizer or config.model, flag="tokenizer")
        model = ControlTokenLM.from_base(base, tokenizer, tokens, config.detach_head)
        log.info(f"model: {config.model} ({config.weights} weights); control tokens {tokens or 'none'}")
    if config.lora:
        targets = [t.strip() for t in config.lora_target_modules.split(",")] if config.lora_target_modules else None
        model.add_lora(config.lora_r, config.lora_alpha, config.lora_dropout, targets)
    return model.train()


def _cache_hidden_states(config: SFTConfig, model: Any, examples: list, collate: Any, accelerator: Any,
                         log: Any) -> tuple[dict[str, Any], float]:
    """Store each example's final hidden states when that is exact and fits the budget (`unfreeze.cache`)."""
    from unfreeze.cache import final_hidden
    from unfreeze.cache.policy import CacheRequest

    request = CacheRequest(config.cache_activations, config.cache_budget_gb, "cache_activations=on", "cache_budget_gb")
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else model.hf_model.dtype
    return final_hidden.prepare(model, examples, collate, request, device=accelerator.device,
                                autocast=accelerator.autocast, dtype=dtype, batch_size=config.eval_batch_size, log=log)


@torch.no_grad()
def evaluate(model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
    """Validation losses with every labelled token weighted equally (across batches and processes)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        output = model(**batch, return_logprobs=False)
        per_example = torch.stack([output.example_lm_nll.float(), output.example_pause_nll.float(),
                                   output.example_tokens.float()], dim=1)
        totals += accelerator.gather_for_metrics(per_example).sum(0).double()
    model.train()
    lm, pause, tokens = totals.tolist()
    tokens = max(tokens, 1.0)
    return {"eval_loss": (lm + pause) / tokens, "eval_lm_loss": lm / tokens, "eval_pause_loss": pause / tokens}


def _format_losses(when: str, losses: dict[str, float]) -> str:
    return (f"{when}: validation loss {losses['eval_loss']:.4f} (lm {losses['eval_lm_loss']:.4f}, "
            f"pause {losses['eval_pause_loss']:.4f})")


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
    if config.eval_every < 0:
        raise UsageError(f"eval_every must be 0 (off) or positive, got {config.eval_every}")
    if not config.pause_token:
        on = [key for key in ("unfreeze_pause_embedding", "unfreeze_pause_head") if getattr(config, key)]
        if on:
            raise UsageError(f"{', '.join(on)} need a control token, but pause_token is null")
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


def _check_pauses(config: SFTConfig, rows: list[dict], train_file: Path, log: Any) -> None:
    from unfreeze.data.sft_data import count_containing

    if config.pause_token:
        if count_containing(rows, config.pause_token) == 0:
            log.warning(f"warning: no {config.answer_field!r} in {train_file} contains {config.pause_token!r}; "
                        f"the pause head will only learn never to pause (pause data: `unfreeze inject-pauses "
                        f"--pause_token '{config.pause_token}'`; its answers may be in answer_field="
                        f"pause_augmented_answer)")
    elif count_containing(rows, "<|pause|>"):
        log.warning(f"warning: {train_file} contains '<|pause|>' but pause_token is null: it is trained as "
                    f"plain text")


def _reset_accelerate_state() -> None:
    """Forget the previous recipe's accelerate settings (mixed precision, accumulation); keeps the
    process group of a distributed launch (PartialState)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
