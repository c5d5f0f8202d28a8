"""Successive halving (Jamieson & Talwalkar 2016; Li et al. 2018) over candidates, within a time budget.

Each round trains every surviving arm up to a target number of optimizer steps (never past its full
run), scores it on the validation split, and keeps the best 1/eta (ties: lower validation loss, then
the cheaper arm). Training continues where the last round stopped. Before each round the target is
the largest r whose remaining plan (targets r, r*eta, r*eta**2, ... down to one arm) fits the budget
left, planned pessimistically (the most expensive arms survive); once expensive arms are out, the
cheap survivors get the steps held back for them. When the next round does not fit, the rounds stop
and the result says so.

Arms only need `advance(steps)`, `evaluate() -> (score, loss)`, `steps_done`, `total_steps`,
`step_cost()` and `eval_cost()` (seconds), so the tests drive it with scripted learning curves. The score is
higher-is-better: a classify candidate's validation accuracy, an sft candidate's negated validation loss
(`sft_arms`), so one ranking rule serves both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from unfreeze.errors import UsageError


class ArmLike(Protocol):
    name: str
    steps_done: int
    total_steps: int

    def advance(self, steps: int) -> None: ...
    def evaluate(self) -> tuple[float, float]: ...
    def step_cost(self) -> float: ...
    def eval_cost(self) -> float: ...


@dataclass
class Rung:
    steps: dict[str, int]  # arm -> steps done when scored
    scores: dict[str, tuple[float, float]]  # arm -> (score: val accuracy, or -val loss for sft; val loss)
    kept: list[str]


@dataclass
class HalvingResult:
    rungs: list[Rung] = field(default_factory=list)
    first_rung_steps: int = 0
    planned_s: float = 0.0
    stopped_early: bool = False  # the budget (planned or by the clock) ended the rounds before one arm was left

    @property
    def survivors(self) -> list[str]:
        return self.rungs[-1].kept if self.rungs else []


def survivors_per_round(n: int, eta: int) -> list[int]:
    """How many arms each round trains: n, ceil(n/eta), ... down to 1."""
    counts = [n]
    while counts[-1] > 1:
        counts.append(math.ceil(counts[-1] / eta))
    return counts


def round_costs(arms: list[ArmLike], r0: int, eta: int) -> list[float]:
    """Seconds of each round with first round r0, if the most expensive arms always survive."""
    by_cost = sorted(arms, key=lambda a: a.step_cost() * a.total_steps, reverse=True)
    done = {id(a): a.steps_done for a in arms}
    costs = []
    for k, count in enumerate(survivors_per_round(len(arms), eta)):
        total = 0.0
        for arm in by_cost[:count]:
            target = min(r0 * eta**k, arm.total_steps)
            total += max(target - done[id(arm)], 0) * arm.step_cost() + arm.eval_cost()
            done[id(arm)] = max(done[id(arm)], target)
        costs.append(total)
    return costs


def planned_cost(arms: list[ArmLike], r0: int, eta: int) -> float:
    return sum(round_costs(arms, r0, eta))


def first_rung_steps(arms: list[ArmLike], budget_s: float, eta: int, budget_name: str) -> int:
    """The largest r0 whose whole plan fits `budget_s` (at least 1); a budget short of one more step and
    one evaluation of every arm is an error."""
    one_step = sum((a.step_cost() if a.steps_done < a.total_steps else 0.0) + a.eval_cost() for a in arms)
    if one_step > budget_s:
        raise UsageError(f"--budget {budget_name} leaves {max(budget_s, 0):.1f}s, less than one training step and "
                         f"one evaluation of every candidate ({one_step:.1f}s); raise --budget or use fewer --candidates")
    # Start past the steps already taken (the cost measurement), so that the first round trains.
    low = min(min(a.steps_done for a in arms) + 1, max(a.total_steps for a in arms))
    if planned_cost(arms, low, eta) > budget_s:
        return low  # not even that fits whole: the rounds that fit run
    high = max(a.total_steps for a in arms)
    while low < high:  # the plan's cost grows with r0
        middle = (low + high + 1) // 2
        if planned_cost(arms, middle, eta) <= budget_s:
            low = middle
        else:
            high = middle - 1
    return low


def _play_round(alive: list[ArmLike], target: int, eta: int) -> tuple[Rung, list[ArmLike]]:
    """Train every arm to `target` steps (at most its full run), score it, keep the best 1/eta."""
    scores, steps = {}, {}
    for arm in alive:
        arm.advance(max(min(target, arm.total_steps) - arm.steps_done, 0))
        scores[arm.name], steps[arm.name] = arm.evaluate(), arm.steps_done
    ranked = sorted(alive, key=lambda a: (-scores[a.name][0], scores[a.name][1], a.step_cost()))
    keep = ranked[:math.ceil(len(alive) / eta)]
    for arm in alive:
        if arm not in keep and hasattr(arm, "release"):
            arm.release()
    return Rung(steps, scores, [a.name for a in keep]), keep


def successive_halving(arms: list[ArmLike], budget_s: float, eta: int, budget_name: str = "",
                       clock: Callable[[], float] = time.perf_counter,
                       on_rung: Callable[[Rung], None] | None = None,
                       on_round: Callable[[int, int], None] | None = None) -> HalvingResult:
    """Run the rounds; returns every round's scores and survivors. Arms eliminated are `release()`d if they can.
    `on_round(arms, target steps)` is told before each round, `on_rung(rung)` after it (progress, tracking).

    The plan is redone before every round for the arms still in it and the budget still left (planned
    cost of the rounds played, or the clock, whichever says more was spent): once the expensive arms
    are out, the cheap survivors get the steps that were held back for them.
    """
    start = clock()
    r0 = first_rung_steps(arms, budget_s, eta, budget_name)
    result = HalvingResult(first_rung_steps=r0)
    alive, target, spent = list(arms), r0, 0.0
    while True:
        cost = round_costs(alive, target, eta)[0]
        if result.rungs and spent + cost > budget_s:
            result.stopped_early = True
            break
        if on_round is not None:
            on_round(len(alive), target)
        rung, keep = _play_round(alive, target, eta)
        result.rungs.append(rung)
        spent = max(spent + cost, clock() - start)
        if on_rung is not None:
            on_rung(rung)
        if len(alive) == 1:
            break
        alive = keep
        longest = max(a.total_steps for a in alive)
        target = next_target(alive, target, eta, budget_s - spent, longest)
    result.planned_s = spent
    return result


def next_target(alive: list[ArmLike], previous: int, eta: int, remaining_s: float, longest: int) -> int:
    """The largest first-round target for the arms left whose whole remaining plan fits `remaining_s`;
    at least one step past the previous round (that round may then not fit: the caller stops)."""
    low, high = min(previous + 1, longest), longest
    if planned_cost(alive, low, eta) > remaining_s:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        if planned_cost(alive, middle, eta) <= remaining_s:
            low = middle
        else:
            high = middle - 1
    return low
