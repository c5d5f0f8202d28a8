"""The fit step of `unfreeze sft`: the training loop, periodic validation, checkpoints, the final losses.

`fit` trains from wherever `Setup.state` says (step 0, or a checkpoint's position) to the end of the last
epoch. Everything the loop needs to continue exactly lives in `TrainState`, which every checkpoint stores:
the step, the epoch and how many of its batches were used, the shuffling generator's state when the
epoch began (so the epoch's order can be drawn again), the training losses not yet logged, and the logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from unfreeze.tasks.sft_config import SFTConfig
from unfreeze.tasks.sft_resume import save_checkpoint


@dataclass
class TrainState:
    """Where the loop is and what it has recorded (a checkpoint stores it: `state_dict`)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained on
    epoch_order: torch.Tensor | None = None  # the shuffling generator's state when `epoch` began
    running: list = field(default_factory=list)  # per batch [loss, lm, pause] since the last log line
    train_seconds: float = 0.0
    initial_losses: dict = field(default_factory=dict)
    train_history: list = field(default_factory=list)
    eval_history: list = field(default_factory=list)
    best: dict | None = None  # keep: best -- {"step", "losses", "tensors"}: the lowest validation so far
    resumed_from: int | None = None  # not saved: the step this process started from

    def state_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in vars(self).items() if k != "resumed_from"}
        return {**values, "running": [r.cpu() for r in self.running]}

    def load_state_dict(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)


@dataclass
class Setup:
    """What the setup step builds: prepared model, loaders, optimizer and schedule, and the loop's state."""

    model: Any  # the ControlTokenLM, as returned by accelerator.prepare
    optimizer: Any
    scheduler: Any
    train_loader: Any
    val_loader: Any
    params: list  # the trainable tensors (for clipping)
    generator: torch.Generator  # shuffles the training set
    total_steps: int
    trainable: Any  # models.trainable.TrainableSummary
    data: Any  # sft_setup.SFTData
    cache_info: dict
    cache_seconds: float
    state: TrainState = field(default_factory=TrainState)


def fit(run: Setup, config: SFTConfig, accelerator: Any, log: Any) -> dict[str, float]:
    """Train to the end; returns the validation losses of the weights the run keeps."""
    from tqdm.auto import tqdm

    state = run.state
    if config.eval_at_start and state.resumed_from is None:
        state.initial_losses = evaluate(run.model, run.val_loader, accelerator)
        log.info(format_losses("before training", state.initial_losses))
        accelerator.log(state.initial_losses, step=0)
    log.info(f"training: {config.num_epochs} epoch(s), {run.total_steps} optimizer steps of {config.batch_size} "
             f"examples x {config.gradient_accumulation_steps} accumulation x {accelerator.num_processes} process(es)")
    progress = tqdm(total=run.total_steps, initial=state.step, desc="sft",
                    disable=not accelerator.is_local_main_process)
    started, seconds_before = time.perf_counter(), state.train_seconds
    run.model.train()
    for epoch in range(state.epoch, config.num_epochs):
        state.epoch = epoch
        for batch in _remaining_batches(run, accelerator):
            _train_on_batch(run, config, accelerator, batch)
            state.batches_done += 1
            if accelerator.sync_gradients:
                state.train_seconds = seconds_before + time.perf_counter() - started
                _after_optimizer_step(run, config, accelerator, log, progress)
        state.batches_done, state.epoch_order = 0, None
    progress.close()
    state.train_seconds = seconds_before + time.perf_counter() - started
    final_losses = _validate(run, config, accelerator, log, "after training")
    if config.keep == "best" and state.best["step"] != state.step:
        final_losses = _restore_best(run, accelerator, log)
    for tracker in accelerator.trackers:
        tracker.finish()
    return final_losses


def _validate(run: Setup, config: SFTConfig, accelerator: Any, log: Any, when: str) -> dict[str, float]:
    """Validation losses, logged and recorded; with keep: best, remember the weights if they are the best."""
    state = run.state
    losses = evaluate(run.model, run.val_loader, accelerator)
    state.eval_history.append({"step": state.step, **losses})
    accelerator.log(losses, step=state.step)
    log.info(format_losses(when, losses))
    if config.keep == "best" and (state.best is None or losses["eval_loss"] < state.best["losses"]["eval_loss"]):
        model = accelerator.unwrap_model(run.model)
        tensors = {name: param.detach().to("cpu", copy=True)
                   for name, param in model.named_parameters() if param.requires_grad}
        state.best = {"step": state.step, "losses": losses, "tensors": tensors}
    return losses


def _restore_best(run: Setup, accelerator: Any, log: Any) -> dict[str, float]:
    """keep: best -- put back the trainable tensors of the best validation; returns their losses, measured
    again (they equal the recorded ones: the check that the right weights came back)."""
    best = run.state.best
    model = accelerator.unwrap_model(run.model)
    with torch.no_grad():
        for name, tensor in best["tensors"].items():
            model.get_parameter(name).copy_(tensor)
    losses = evaluate(run.model, run.val_loader, accelerator)
    log.info(format_losses(f"kept the weights of step {best['step']} (keep: best)", losses))
    return losses


def _remaining_batches(run: Setup, accelerator: Any):
    """This epoch's batches not yet trained on: the shuffling generator restarts from its state at the
    epoch's start (so the order is the same), and batches already used are skipped without being loaded."""
    state = run.state
    if state.epoch_order is None:
        state.epoch_order = run.generator.get_state()
    else:
        run.generator.set_state(state.epoch_order)
    if state.batches_done:
        return accelerator.skip_first_batches(run.train_loader, state.batches_done)
    return run.train_loader


def _train_on_batch(run: Setup, config: SFTConfig, accelerator: Any, batch: dict) -> None:
    with accelerator.accumulate(run.model):
        output = run.model(**batch, return_logprobs=False)
        accelerator.backward(output.loss)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    # The LM loss is logged as the reference logs it: per normal-token label (the loss trained on divides
    # by every labelled position). Kept on the device; read (one sync) only when logging.
    lm_per_normal = output.example_lm_nll.sum() / output.example_normal_tokens.sum().clamp(min=1)
    run.state.running.append(torch.stack([output.loss, lm_per_normal, output.pause_loss]).detach())


def _after_optimizer_step(run: Setup, config: SFTConfig, accelerator: Any, log: Any, progress: Any) -> None:
    """Schedule, then (as due) log the training losses, validate, and save a checkpoint -- in that order,
    so that a checkpoint holds the random state after everything this step did."""
    state = run.state
    run.scheduler.step()
    state.step += 1
    progress.update(1)
    if state.step % config.log_every == 0 or state.step == run.total_steps:
        loss, lm_loss, pause_loss = torch.stack(state.running).mean(0).tolist()
        state.running = []
        record = {"step": state.step, "train_loss": loss, "train_lm_loss": lm_loss, "train_pause_loss": pause_loss,
                  "lr": run.optimizer.param_groups[0]["lr"]}  # what the next step uses
        state.train_history.append(record)
        progress.set_postfix(loss=f"{loss:.4f}")
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
        log.info(f"step {state.step}/{run.total_steps}: train loss {loss:.4f} (lm {lm_loss:.4f}, "
                 f"pause {pause_loss:.4f})")
    if config.eval_every and state.step % config.eval_every == 0 and state.step < run.total_steps:
        _validate(run, config, accelerator, log, f"step {state.step}")
    if config.save_steps and (state.step % config.save_steps == 0 or state.step == run.total_steps):
        save_checkpoint(run, config, accelerator, log)


@torch.no_grad()
def evaluate(model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
    """Validation losses with every labelled token weighted equally (across batches and processes).

    `eval_loss` and `eval_pause_loss` divide by the labelled positions (`eval_tokens`), `eval_lm_loss` by
    the normal-token labels (`eval_normal_tokens`), as the reference logs it; so
    eval_loss = eval_lm_loss * eval_normal_tokens / eval_tokens + eval_pause_loss.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        output = model(**batch, return_logprobs=False)
        per_example = torch.stack([output.example_lm_nll.float(), output.example_pause_nll.float(),
                                   output.example_tokens.float(), output.example_normal_tokens.float()], dim=1)
        totals += accelerator.gather_for_metrics(per_example).sum(0).double()
    model.train()
    lm, pause, tokens, normal = totals.tolist()
    return {"eval_loss": (lm + pause) / max(tokens, 1.0), "eval_lm_loss": lm / max(normal, 1.0),
            "eval_pause_loss": pause / max(tokens, 1.0), "eval_tokens": int(tokens), "eval_normal_tokens": int(normal)}


def format_losses(when: str, losses: dict[str, float]) -> str:
    return (f"{when}: validation loss {losses['eval_loss']:.4f} (lm {losses['eval_lm_loss']:.4f}, "
            f"pause {losses['eval_pause_loss']:.4f})")
