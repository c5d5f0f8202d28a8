"""A suggest candidate: classify's own training loop (`training.loop.ClassifierTraining`), run in rounds.

An arm is what successive halving drives: `advance(n)` trains n more steps of the candidate's loop,
`evaluate()` scores the whole validation split (recorded in `history`), `step_cost()` and `eval_cost()`
say what the next round will cost. Nothing here trains: the loop does, exactly as in `unfreeze classify`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from unfreeze.models.trainable import TrainableSummary
from unfreeze.training.loop import ClassifierTraining


@dataclass
class Arm:
    name: str
    summary: TrainableSummary
    start: int  # the first stage a training step runs (0: the whole model; past the final norm: only the head)
    loop: ClassifierTraining | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (steps, val accuracy, val loss)
    eval_seconds: float | None = None  # the last validation pass

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
        begin = time.perf_counter()
        accuracy, loss = self.loop.evaluate("validation")
        self.eval_seconds = time.perf_counter() - begin
        self.history.append((self.steps_done, accuracy, loss))
        return accuracy, loss

    def step_cost(self) -> float:
        """Seconds per optimizer step: the median of the measured steps after the first (warm-up)."""
        measured = sorted(self.loop.step_seconds[1:] or self.loop.step_seconds)
        return measured[len(measured) // 2] if measured else float("nan")

    def eval_cost(self) -> float:
        """Seconds of one validation pass (measured by the last `evaluate`)."""
        return self.eval_seconds or 0.0

    def eval_seconds_per_example(self) -> float:
        return (self.eval_seconds or 0.0) / max(len(self.loop.labels["validation"]), 1)

    def release(self) -> None:
        """Free the model and optimizer of an eliminated arm (its history stays)."""
        self.loop = _Finished(self.loop)


class _Finished:
    """What an eliminated arm keeps of its loop: the counts halving and the table read."""

    def __init__(self, loop: ClassifierTraining):
        self.steps_done, self.total_steps, self.done = loop.steps_done, loop.total_steps, loop.done
        self.step_seconds, self.labels, self.model = loop.step_seconds, loop.labels, None
