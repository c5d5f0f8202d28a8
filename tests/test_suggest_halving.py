"""Successive halving on scripted arms (known learning curves and costs), and the cost model's counts."""

from __future__ import annotations

import math

import pytest

from unfreeze.errors import UsageError
from unfreeze.recipes.suggest import cost, halving, signals


class Scripted:
    """An arm whose validation accuracy after s steps is plateau - (plateau - start) * exp(-s / tau)."""

    def __init__(self, name, plateau, tau, step_s=1.0, total_steps=64, start=0.5):
        self.name, self.plateau, self.tau, self.start = name, plateau, tau, start
        self.step_s, self.total_steps, self.steps_done = step_s, total_steps, 0
        self.trained = 0  # steps actually run (checks that rounds continue instead of restarting)
        self.released = False

    def advance(self, steps):
        assert not self.released, "an eliminated arm was trained again"
        self.steps_done += steps
        self.trained += steps

    def evaluate(self):
        acc = self.plateau - (self.plateau - self.start) * math.exp(-self.steps_done / self.tau)
        return acc, 1 - acc

    def step_cost(self):
        return self.step_s

    def eval_cost(self):
        return 0.0

    def release(self):
        self.released = True


def arms():
    return [
        Scripted("fast_but_low", plateau=0.80, tau=1.0),  # best after 1-2 steps, worst later
        Scripted("slow_and_best", plateau=0.97, tau=6.0),
        Scripted("medium", plateau=0.90, tau=3.0),
        Scripted("bad", plateau=0.60, tau=2.0),
        Scripted("noise", plateau=0.55, tau=2.0),
        Scripted("slow_and_bad", plateau=0.70, tau=20.0),
    ]


def test_halving_keeps_the_arm_with_the_best_curve_given_enough_budget():
    candidates = arms()
    result = halving.successive_halving(candidates, budget_s=200, eta=2, clock=lambda: 0.0)
    assert result.survivors == ["slow_and_best"]
    assert [len(r.scores) for r in result.rungs] == [6, 3, 2, 1]
    assert set(result.rungs[0].kept) == {"fast_but_low", "slow_and_best", "medium"} or result.first_rung_steps > 2
    by_name = {a.name: a for a in candidates}
    assert by_name["noise"].released and not by_name["slow_and_best"].released
    # Rounds continue training: the survivor ran exactly its last round's target, never restarted.
    assert by_name["slow_and_best"].trained == result.rungs[-1].steps["slow_and_best"]
    assert result.planned_s <= 200


def test_a_tight_budget_is_spent_round_by_round_and_never_exceeded():
    candidates = arms()
    result = halving.successive_halving(candidates, budget_s=12, eta=2, clock=lambda: 0.0)
    assert result.first_rung_steps == 1  # the whole plan from 1 step (17s) does not fit; its rounds do, one by one
    assert "fast_but_low" in result.rungs[0].kept
    assert sum(a.trained for a in candidates) * 1.0 <= 12 and result.planned_s <= 12
    assert sum(a.trained for a in candidates) >= 10  # the budget is used, not held back


def test_survivors_get_the_budget_the_eliminated_arms_would_have_used():
    cheap = [Scripted(f"cheap{i}", 0.9 - i / 100, 4.0, step_s=0.1, total_steps=40) for i in range(3)]
    pricey = [Scripted(f"pricey{i}", 0.5, 4.0, step_s=5.0, total_steps=40) for i in range(3)]
    result = halving.successive_halving(cheap + pricey, budget_s=60, eta=2, clock=lambda: 0.0)
    assert result.survivors == ["cheap0"]
    assert result.rungs[-1].steps["cheap0"] == 40  # trained to its full run once the expensive arms were out
    assert result.planned_s <= 60


def test_the_plan_fits_the_budget_and_uses_it():
    candidates = arms()
    r0 = halving.first_rung_steps(candidates, 100, 2, "")
    assert halving.planned_cost(candidates, r0, 2) <= 100 < halving.planned_cost(candidates, r0 + 1, 2)


def test_the_plan_never_trains_past_a_full_run():
    candidates = [Scripted("a", 0.9, 2.0, total_steps=3), Scripted("b", 0.8, 2.0, total_steps=3)]
    result = halving.successive_halving(candidates, budget_s=1000, eta=2, clock=lambda: 0.0)
    assert all(steps <= 3 for rung in result.rungs for steps in rung.steps.values())
    assert result.survivors == ["a"]


def test_a_budget_too_small_for_one_step_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^--budget 0.001 leaves .* less than one training step"):
        halving.successive_halving(arms(), budget_s=5.9, eta=2, budget_name="0.001", clock=lambda: 0.0)


def test_survivors_per_round():
    assert halving.survivors_per_round(6, 2) == [6, 3, 2, 1]
    assert halving.survivors_per_round(6, 3) == [6, 2, 1]
    assert halving.survivors_per_round(1, 2) == [1]


def test_cost_model_counts_classify_passes():
    shape = cost.RunShape(epochs=2, batch_size=8, sizes={"train": 100, "validation": 20, "test": 30},
                          eval_every=5, eval_batches=2)
    assert shape.steps_per_epoch == 12 and shape.steps == 24
    # periodic: ceil(24/5) = 5 passes x (2 train + 2 val batches); per epoch: 2 x (2 + 2); final: 150 examples
    assert shape.forward_examples() == (5 * 4 + 2 * 4) * 8 + 150
    fixed = cost.Fixed(load_s=2.0, key_s=0.5, build_s=10.0)
    hidden = cost.CandidateCost("last_blocks:2", "hidden", 3, step_s=0.5, forward_example_s=0.01)
    parts = cost.run_seconds(shape, hidden, fixed, builds_shared=True)
    assert parts["train_steps_s"] == 12.0 and parts["cache_build_s"] == 10.0  # the shared build runs every stage
    assert parts["run_s"] == pytest.approx(2.0 + 0.5 + 10.0 + 12.0 + shape.forward_examples() * 0.01)
    uncached = cost.CandidateCost("all", "none", 0, step_s=0.5, forward_example_s=0.01)
    assert cost.run_seconds(shape, uncached, fixed)["cache_key_s"] == 0.0  # nothing frozen: no key is hashed
    assert cost.cache_build_share(0, 4) == 0.0 and cost.cache_build_share(6, 4) == 1.0


def test_spearman():
    assert signals.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert signals.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert signals.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(signals.spearman([1, 1], [1, 2]))
