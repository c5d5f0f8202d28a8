"""A suggest candidate: classify's own training loop (`training.loop.ClassifierTraining`), run in rounds.

An arm is what successive halving drives: `advance(n)` trains n more steps of the candidate's loop,
`evaluate()` scores the whole validation split (recorded in `history`), `step_cost()` and `eval_cost()`
say what the next round will cost, in seconds a busy machine does not inflate (`cost.step_estimate`: from
the loop's wall and CPU time of every step). Nothing here trains: the loop does, exactly as in `unfreeze classify`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from unfreeze.models.trainable import TrainableSummary
from unfreeze.recipes.suggest import cost
from unfreeze.training.loop import ClassifierTraining


@dataclass
class Arm:
    name: str
    summary: TrainableSummary
    start: int  # the first stage a training step runs (0: the whole model; past the final norm: only the head)
    loop: ClassifierTraining | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (steps, val accuracy, val loss)
    eval_times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds of each validation pass

    @property
    def model(self):
        return self.loop.model if self.loop is not None else None

    @property
    def steps_done(self) -> int:
        return self.loop.steps_done

    @property
    def total_steps(self) -> int:
        return self.loop.total_steps

    @property
    def done(self) -> bool:
        return self.loop.done

    def advance(self, steps: int) -> None:
        self.loop.advance(steps)

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, mean loss) on the validation split; the score of a step count already scored is reused."""
        if self.history and self.history[-1][0] == self.steps_done:
            return self.history[-1][1], self.history[-1][2]
        begin, begin_cpu = time.perf_counter(), time.process_time()
        accuracy, loss = self.loop.evaluate("validation")
        self.eval_times.append((time.perf_counter() - begin, time.process_time() - begin_cpu))
        self.history.append((self.steps_done, accuracy, loss))
        return accuracy, loss

    @property
    def uses_cpu_time(self) -> bool:
        """CPU time counts the work on the CPU; a CUDA step's work is the GPU's (wall time only)."""
        return self.loop.device.type != "cuda"

    def step_cost(self) -> float:
        """Seconds per optimizer step, from every step measured so far (`cost.step_estimate`)."""
        cpus = self.loop.step_cpu_seconds if self.uses_cpu_time else None
        return cost.step_estimate(self.loop.step_seconds, cpus, torch.get_num_threads())

    def eval_cost(self) -> float:
        """Seconds of one validation pass: the median of the passes measured (each min(wall, CPU))."""
        values = sorted(cost.work_seconds(wall, cpu if self.uses_cpu_time else None) for wall, cpu in self.eval_times)
        return values[(len(values) - 1) // 2] if values else 0.0

    def eval_seconds_per_example(self) -> float:
        return self.eval_cost() / max(len(self.loop.labels["validation"]), 1)

    def release(self) -> None:
        """Free the model and optimizer of an eliminated arm (its history stays)."""
        self.loop = _Finished(self.loop)


class _Finished:
    """What an eliminated arm keeps of its loop: the counts halving and the table read."""

    def __init__(self, loop: ClassifierTraining):
        self.steps_done, self.total_steps, self.done = loop.steps_done, loop.total_steps, loop.done
        self.step_seconds, self.step_cpu_seconds = loop.step_seconds, loop.step_cpu_seconds
        self.labels, self.device, self.model = loop.labels, loop.device, None
