"""suggest's cost model: the sweep it predicts builds the shared cache where `unfreeze sweep` builds it (checked
against the real cache), a sweep already cached predicts no build, and a busy clock does not inflate the
prediction past a stated bound."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from unfreeze.cache import shared
from unfreeze.models import trainable
from unfreeze.models.classifier import GPT2Classifier
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest import cost
from unfreeze.recipes.suggest.arms import Arm

LOG = logging.getLogger("test_suggest_cost")
SHAPE = cost.RunShape(epochs=2, batch_size=8, sizes={"train": 80, "validation": 16, "test": 16},
                      eval_every=5, eval_batches=2)  # 20 steps; forward passes counted by RunShape
FIXED = cost.Fixed(load_s=3.0, key_s=0.5, build_s=40.0, once_s=2.0, check_s=1.0)


def toy(name, cache, boundary=0, step_s=1.0, forward_example_s=0.01):
    return cost.CandidateCost(name, cache, boundary, step_s, forward_example_s)


# A model of 5 blocks: stages 0 (embeddings), 1-5 (blocks), 6 (final norm); the head reads boundary 7's pooled vector.
TOYS = [toy("last_layer", "pooled", 7, 0.1), toy("last_block", "hidden", 5, 0.5),
        toy("last_blocks:2", "hidden", 4, 0.8), toy("all", "none", 0, 3.0), toy("lora", "none", 0, 2.0)]


def test_the_predicted_sweep_builds_once_per_frozen_prefix_and_adds_up():
    """Known build and step costs: the sweep's seconds by hand."""
    sweep = cost.predict_sweep(SHAPE, TOYS, FIXED, seeds=[1, 2, 3], cached=None)
    builds = [(r["name"], r["seed"]) for r in sweep["runs"] if r["builds"]]
    # rows in order, each with every seed: the pooled vectors, then a rebuild for each new boundary (keeping the old)
    assert builds == [("last_layer", 1), ("last_block", 1), ("last_blocks:2", 1)]
    forward = SHAPE.forward_examples() * 0.01
    per_seed = sum(3.0 + (0.5 if t.cache != "none" else 0.0) + 20 * t.step_s + forward for t in TOYS)
    assert sweep["total_s"] == pytest.approx(2.0 + 5 * 1.0 + 3 * per_seed + 3 * 40.0, abs=1e-2)
    assert sweep["checks_s"] == pytest.approx(7.0) and sweep["builds"] == 3
    # Another order: a rebuild keeps the boundaries stored before, so a later row back at one builds nothing
    order = [TOYS[2], TOYS[1], TOYS[0], toy("blocks:2-2", "hidden", 4)]
    assert [r["builds"] for r in cost.predict_sweep(SHAPE, order, FIXED, [1, 2], None)["runs"]] == [
        True, False, True, False, False, False, False, False]


def test_random_weights_give_every_seed_its_own_cache():
    sweep = cost.predict_sweep(SHAPE, TOYS[:2], FIXED, seeds=[1, 2], cached=frozenset({5}), seed_keys=True,
                               cached_seed=1)
    # seed 1's cache is on disk and holds boundary 5; seed 2's key has nothing yet: pooled, then boundary 5
    assert [(r["name"], r["seed"]) for r in sweep["runs"] if r["builds"]] == [("last_layer", 2), ("last_block", 2)]


def test_a_candidate_set_whose_sweep_is_already_cached_predicts_no_build():
    sweep = cost.predict_sweep(SHAPE, TOYS, FIXED, [1, 2, 3], cached=frozenset({4, 5}))
    assert sweep["builds"] == 0 and all(r["cache_build_s"] == 0 for r in sweep["runs"])
    fresh = cost.predict_sweep(SHAPE, TOYS, FIXED, [1, 2, 3], cached=None)
    assert fresh["total_s"] - sweep["total_s"] == pytest.approx(3 * 40.0, abs=1e-2)
    # a cache holding one of the two boundaries: one rebuild, for the other
    partial = cost.predict_sweep(SHAPE, TOYS, FIXED, [1, 2, 3], cached=frozenset({5}))
    assert [(r["name"], r["seed"]) for r in partial["runs"] if r["builds"]] == [("last_blocks:2", 1)]


# --- against the real shared cache ---------------------------------------------------------------------


def tiny_model(seed: int) -> GPT2Classifier:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=3, n_embd=16, n_head=2, n_positions=32, vocab_size=100,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Classifier(GPT2Model(config), pad_token_id=99).eval()


def tokens() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {split: list(torch.randint(0, 99, (n, 8), generator=gen)) for split, n in
            (("train", 12), ("validation", 6), ("test", 6))}


def need(model) -> cost.CandidateCost:
    """A candidate's cache need, as suggest reads it from the model (`recipe.candidate_cost`)."""
    start = cand.start_stage(model)
    kind = "none" if start == 0 else "pooled" if start == model.final_stage + 1 else "hidden"
    return toy("?", kind, start)


@pytest.mark.parametrize("random_weights", [False, True])
def test_the_predicted_builds_are_the_ones_the_shared_cache_makes(tmp_path, random_weights):
    """Each (candidate, seed) as a sweep runs it: a fresh model (random weights: seeded; pretrained: the same
    weights every seed), the preset, classify's shared cache in one folder. Its builds are the prediction's."""
    # blocks:2-2 starts where last_block does: after the rebuild for last_blocks:2 that boundary is still stored
    names, seeds, data = ["last_layer", "last_block", "all", "last_blocks:2", "blocks:2-2"], [1, 2], tokens()
    made, needs = [], {}
    for name in names:
        for seed in seeds:
            model = tiny_model(seed if random_weights else 0)
            trainable.apply_preset(model, name)
            needs[name] = need(model)
            _, info, _ = shared.prepare(model, data, str(tmp_path), "fp32", torch.device("cpu"), 16, LOG)
            made.append(info is not None and info["shared"]["built"])
    candidates = [cost.CandidateCost(n, needs[n].cache, needs[n].boundary, 1.0, 0.0) for n in names]
    planned = cost.plan_sweep(candidates, seeds, None, seed_keys=random_weights)
    assert [run.builds for run in planned] == made
    assert needs["blocks:2-2"].boundary == needs["last_block"].boundary
    assert sum(made) == (6 if random_weights else 3)  # pooled, then boundary 3, then boundary 2 (per seed if random)


# --- a busy machine -------------------------------------------------------------------------------------


def busy_steps(work: float, n: int, threads: int, quiet_share: float, seed: int = 0):
    """Steps of `work` seconds on a machine where other processes take turns: a step runs quiet with probability
    `quiet_share`, else its wall time is stretched 2-40x. CPU time sums the threads (busy ones spin on)."""
    rng = random.Random(seed)
    walls, cpus = [], []
    for _ in range(n):
        stretch = 1.0 if rng.random() < quiet_share else rng.uniform(2, 40)
        walls.append(work * stretch)
        cpus.append(work * (1.0 if threads == 1 else threads * min(stretch, 1.5)))
    return walls, cpus


def test_one_thread_under_load_predicts_the_quiet_step():
    """The stated bound: with one thread, load (here 90% of the steps stretched 2-40x) moves the estimate by
    nothing; the wall-time median it replaces would be ~10x too long."""
    walls, cpus = busy_steps(0.2, 30, threads=1, quiet_share=0.1)
    assert cost.step_estimate(walls, cpus, threads=1) == pytest.approx(0.2)
    assert sorted(walls[1:])[14] > 2 * 0.2  # what wall time alone would have said


def test_more_threads_under_load_stay_within_threads_times_the_quiet_step():
    """The stated bound with n threads: at most n x the quiet step whatever the load (CPU time sums the threads),
    and the quiet step itself once a quarter of the steps ran quiet."""
    for seed in range(5):
        walls, cpus = busy_steps(0.2, 30, threads=2, quiet_share=0.0, seed=seed)
        assert 0.2 <= cost.step_estimate(walls, cpus, threads=2) <= 2 * 0.2 * 1.5
        walls, cpus = busy_steps(0.2, 40, threads=2, quiet_share=0.5, seed=seed)
        assert cost.step_estimate(walls, cpus, threads=2) == pytest.approx(0.2)


def test_a_busy_machine_does_not_inflate_the_predicted_sweep():
    """The whole path: arms timed under load -> their step costs -> the predicted sweep, against a quiet machine."""

    class Loop:  # what an arm reads of classify's loop
        def __init__(self, walls, cpus):
            self.step_seconds, self.step_cpu_seconds, self.device = walls, cpus, torch.device("cpu")

    def sweep(busy: bool) -> float:
        costs = []
        for i, t in enumerate(TOYS):
            walls, cpus = busy_steps(t.step_s, 12, 1, quiet_share=0.0 if busy else 1.0, seed=i)
            arm = Arm(t.name, None, t.boundary, Loop(walls, cpus))
            costs.append(cost.CandidateCost(t.name, t.cache, t.boundary, arm.step_cost(), t.forward_example_s))
        return cost.predict_sweep(SHAPE, costs, FIXED, [1, 2, 3], None)["total_s"]

    monkey_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert sweep(busy=True) == pytest.approx(sweep(busy=False), rel=0.01)
    finally:
        torch.set_num_threads(monkey_threads)


def test_the_work_clock_counts_cpu_time_on_a_busy_machine_and_wall_time_on_cuda():
    ticks = {"wall": 0.0, "cpu": 0.0}
    clock = cost.WorkClock(wall=lambda: ticks["wall"], cpu=lambda: ticks["cpu"])
    ticks.update(wall=30.0, cpu=3.0)  # a tenth of a core: 27 s waiting for other processes
    assert clock() == 3.0 and clock.wall() == 30.0
    ticks.update(wall=31.0, cpu=5.0)  # two threads on a quiet machine: CPU runs ahead of the wall
    assert clock() == 5.0
    assert cost.WorkClock(use_cpu=False, wall=lambda: ticks["wall"], cpu=lambda: 0.0)() == 0.0  # made now: nothing yet


def test_the_machine_is_called_busy_on_evidence():
    assert cost.machine_state(10.0, 4.0, threads=1, cores=2, load_avg=3.0)["busy"]  # 40% of a core
    quiet = cost.machine_state(10.0, 9.9, threads=1, cores=2, load_avg=2.5)  # the other core busy: not ours
    assert not quiet["busy"] and cost.busy_note(quiet) is None
    assert cost.machine_state(10.0, 12.0, threads=2, cores=2, load_avg=3.5)["busy"]  # others ~1.5 cores
    assert not cost.machine_state(10.0, 12.0, threads=2, cores=2, load_avg=2.2)["busy"]
    note = cost.busy_note(cost.machine_state(10.0, 4.0, threads=1, cores=2, load_avg=3.0))
    assert "busy" in note and "40%" in note and "CPU time" in note
