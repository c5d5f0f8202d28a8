"""The SFT training loop: one object that `unfreeze sft` drives (and, run in slices, suggest for SFT).

`SFTTraining` trains from wherever its `TrainState` says (step 0, or a checkpoint's position): `advance(n)`
takes n more optimizer steps and returns; `advance()` trains to the end; `finish()` validates the weights
the run keeps (the last, or with keep=best the best validated ones) and returns their losses. Everything the
loop needs to continue exactly lives in `TrainState`, which every checkpoint stores: the step, the epoch and
how many of its batches were used, the shuffling generator's state when the epoch began (so the epoch's
order can be drawn again), the training losses not yet logged, and the logs.

The loop runs under `accelerate` (one process or several): it places batches, accumulates gradients and
reduces losses across processes; the forward passes run under this run's own autocast (`Precision`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class SFTSchedule:
    """How an SFT run trains (sft's options of the same names)."""

    num_epochs: int = 1
    batch_size: int = 8
    accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 500  # 0: only at the end
    eval_at_start: bool = False
    keep: str = "last"  # or "best": the lowest validation loss of the periodic and final validations
    save_steps: int = 0  # 0: no checkpoints


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
    """What the recipe's setup builds: prepared model, loaders, optimizer and schedule, and the loop's state."""

    model: Any  # the ControlTokenLM, as returned by accelerator.prepare
    optimizer: Any
    scheduler: Any
    train_loader: Any
    val_loader: Any
    params: list  # the trainable tensors (for clipping)
    generator: torch.Generator  # shuffles the training set
    total_steps: int
    trainable: Any  # models.trainable.TrainableSummary
    data: Any  # the encoded data (recipes.sft.setup.SFTData)
    cache_info: dict
    cache_seconds: float
    precision: Any  # training.precision.Precision
    state: TrainState = field(default_factory=TrainState)


class SFTTraining:
    """An SFT run's loop, resumable in slices (see the module docstring).

    `checkpoint` (called after an optimizer step when `save_steps` says so) saves a resumable checkpoint;
    the recipe provides it, with everything it needs to name the run. `record(numbers, step)` receives the
    training and validation losses as they are logged (the run's tracker).
    """

    def __init__(self, run: Setup, schedule: SFTSchedule, accelerator: Any, log: Any,
                 checkpoint: Callable[[], Any] | None = None, progress: bool = True,
                 record: Callable[[dict, int], None] | None = None):
        self.run, self.schedule, self.accelerator, self.log = run, schedule, accelerator, log
        self.checkpoint = checkpoint
        self.record = record or (lambda numbers, step: None)  # the training and validation losses, to a tracker
        self.progress = progress
        self._steps = None

    @property
    def state(self) -> TrainState:
        return self.run.state

    @property
    def done(self) -> bool:
        return self.state.step >= self.run.total_steps

    def advance(self, steps: int | None = None) -> None:
        """Take `steps` more optimizer steps (all that are left when None)."""
        from tqdm.auto import tqdm

        if self._steps is None:
            self._begin()
            self._steps = self._loop()
        left = self.run.total_steps - self.state.step
        count = left if steps is None else min(steps, left)
        with tqdm(total=self.run.total_steps, initial=self.state.step, desc="sft",
                  disable=not (self.progress and self.accelerator.is_local_main_process)) as bar:
            for _ in range(count):
                next(self._steps)
                bar.update(1)
        if self.done:
            next(self._steps, None)  # close the last epoch

    def finish(self) -> dict[str, float]:
        """Validate the final weights (keep=best: put back the best validated ones); returns their losses."""
        losses = self.validate("after training")
        if self.schedule.keep == "best" and self.state.best["step"] != self.state.step:
            losses = self._restore_best()
        return losses

    # --- the loop ------------------------------------------------------------------------------------------
    def _begin(self) -> None:
        state, accelerator = self.state, self.accelerator
        if self.schedule.eval_at_start and state.resumed_from is None:
            state.initial_losses = self.evaluate()
            self.log.info(format_losses("before training", state.initial_losses))
            self.record(state.initial_losses, 0)
        self.log.info(f"training: {self.schedule.num_epochs} epoch(s), {self.run.total_steps} optimizer steps of "
                      f"{self.schedule.batch_size} examples x {self.schedule.accumulation_steps} accumulation x "
                      f"{accelerator.num_processes} process(es)")

    def _loop(self):
        """Yields after every optimizer step."""
        state, run = self.state, self.run
        seconds_before, started = state.train_seconds, time.perf_counter()
        run.model.train()
        for epoch in range(state.epoch, self.schedule.num_epochs):
            state.epoch = epoch
            for batch in self._remaining_batches():
                self._train_on_batch(batch)
                state.batches_done += 1
                if self.accelerator.sync_gradients:
                    state.train_seconds = seconds_before + time.perf_counter() - started
                    self._after_optimizer_step()
                    yield
            state.batches_done, state.epoch_order = 0, None
        state.train_seconds = seconds_before + time.perf_counter() - started

    def _remaining_batches(self):
        """This epoch's batches not yet trained on: the shuffling generator restarts from its state at the
        epoch's start (so the order is the same), and batches already used are skipped without being loaded."""
        state, run = self.state, self.run
        if state.epoch_order is None:
            state.epoch_order = run.generator.get_state()
        else:
            run.generator.set_state(state.epoch_order)
        if state.batches_done:
            return self.accelerator.skip_first_batches(run.train_loader, state.batches_done)
        return run.train_loader

    def _train_on_batch(self, batch: dict) -> None:
        run, accelerator = self.run, self.accelerator
        with accelerator.accumulate(run.model):
            with run.precision.autocast(accelerator.device):
                output = run.model(**batch, return_logprobs=False)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients and self.schedule.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.params, self.schedule.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        # The LM loss is logged as the reference logs it: per normal-token label (the loss trained on divides
        # by every labelled position). Kept on the device; read (one sync) only when logging.
        lm_per_normal = output.example_lm_nll.sum() / output.example_normal_tokens.sum().clamp(min=1)
        self.state.running.append(torch.stack([output.loss, lm_per_normal, output.pause_loss]).detach())

    def _after_optimizer_step(self) -> None:
        """Schedule, then (as due) log the training losses, validate, and save a checkpoint -- in that order,
        so that a checkpoint holds the random state after everything this step did."""
        state, run, schedule = self.state, self.run, self.schedule
        run.scheduler.step()
        state.step += 1
        if state.step % schedule.log_every == 0 or state.step == run.total_steps:
            # Every process trained on its own micro-batches: the global batch's losses are their mean.
            mean = self.accelerator.reduce(torch.stack(state.running).mean(0), reduction="mean")
            loss, lm_loss, pause_loss = mean.tolist()
            state.running = []
            record = {"step": state.step, "train_loss": loss, "train_lm_loss": lm_loss,
                      "train_pause_loss": pause_loss, "lr": run.optimizer.param_groups[0]["lr"]}  # the next step's
            state.train_history.append(record)
            self.record({k: v for k, v in record.items() if k != "step"}, state.step)
            self.log.info(f"step {state.step}/{run.total_steps}: train loss {loss:.4f} (lm {lm_loss:.4f}, "
                          f"pause {pause_loss:.4f})")
        if schedule.eval_every and state.step % schedule.eval_every == 0 and state.step < run.total_steps:
            self.validate(f"step {state.step}")
        if self.checkpoint is not None and schedule.save_steps and (
                state.step % schedule.save_steps == 0 or state.step == run.total_steps):
            self.checkpoint()

    # --- validation ----------------------------------------------------------------------------------------
    def validate(self, when: str) -> dict[str, float]:
        """Validation losses, logged and recorded; with keep=best, remember the weights if they are the best."""
        state = self.state
        losses = self.evaluate()
        state.eval_history.append({"step": state.step, **losses})
        self.record(losses, state.step)
        self.log.info(format_losses(when, losses))
        if self.schedule.keep == "best" and (state.best is None
                                             or losses["eval_loss"] < state.best["losses"]["eval_loss"]):
            model = self.accelerator.unwrap_model(self.run.model)
            tensors = {name: param.detach().to("cpu", copy=True)
                       for name, param in model.named_parameters() if param.requires_grad}
            state.best = {"step": state.step, "losses": losses, "tensors": tensors}
        return losses

    def _restore_best(self) -> dict[str, float]:
        """keep=best: put back the trainable tensors of the best validation; returns their losses, measured
        again (they equal the recorded ones: the check that the right weights came back)."""
        best = self.state.best
        model = self.accelerator.unwrap_model(self.run.model)
        with torch.no_grad():
            for name, tensor in best["tensors"].items():
                model.get_parameter(name).copy_(tensor)
        losses = self.evaluate()
        self.log.info(format_losses(f"kept the weights of step {best['step']} (keep: best)", losses))
        return losses

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation losses with every labelled token weighted equally (across batches and processes).

        `eval_loss` and `eval_pause_loss` divide by the labelled positions (`eval_tokens`), `eval_lm_loss` by
        the normal-token labels (`eval_normal_tokens`), as the reference logs it; so
        eval_loss = eval_lm_loss * eval_normal_tokens / eval_tokens + eval_pause_loss.
        """
        accelerator = self.accelerator
        # A validation pass draws nothing from the run's random stream (iterating a loader draws its base seed from
        # it): the training steps, their dropout included, are the same whatever eval_every, and suggest may score
        # a candidate whenever its rounds end without changing the run it stands for.
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._validation_losses()

    def _validation_losses(self) -> dict[str, float]:
        run, accelerator = self.run, self.accelerator
        run.model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
        for batch in run.val_loader:
            with run.precision.autocast(accelerator.device):
                output = run.model(**batch, return_logprobs=False)
            per_example = torch.stack([output.example_lm_nll.float(), output.example_pause_nll.float(),
                                       output.example_tokens.float(), output.example_normal_tokens.float()], dim=1)
            totals += accelerator.gather_for_metrics(per_example).sum(0).double()
        run.model.train()
        lm, pause, tokens, normal = totals.tolist()
        return {"eval_loss": (lm + pause) / max(tokens, 1.0), "eval_lm_loss": lm / max(normal, 1.0),
                "eval_pause_loss": pause / max(tokens, 1.0), "eval_tokens": int(tokens),
                "eval_normal_tokens": int(normal)}


def format_losses(when: str, losses: dict[str, float]) -> str:
    return (f"{when}: validation loss {losses['eval_loss']:.4f} (lm {losses['eval_lm_loss']:.4f}, "
            f"pause {losses['eval_pause_loss']:.4f})")
