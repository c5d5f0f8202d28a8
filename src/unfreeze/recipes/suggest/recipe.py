"""`unfreeze suggest`: rank candidate trainable-parameter choices at a fraction of the sweep's cost.

setup (data, models, one shared on-disk cache of the frozen network) -> cheap signals (per-layer
probes, relative gradient norms) -> measure a few steps of every candidate -> predict the sweep that would
run (`cost`) -> successive halving within the budget (a share of that sweep, counted in work seconds) -> the
ranked table, suggestion.json, a PNG and (optionally) a sweep file that reads suggest's cache.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from unfreeze.cache import disk
from unfreeze.config import to_dict
from unfreeze.errors import UsageError, require
from unfreeze.files import check_output_path
from unfreeze.lifecycle import Run, Tracking, run_folder
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest import cost, halving, output, signals
from unfreeze.recipes.classify.model import make_trainable
from unfreeze.recipes.classify.recipe import schedule
from unfreeze.recipes.suggest.arms import Arm
from unfreeze.recipes.suggest.setup import Setup, prepare
from unfreeze.training.loop import ClassifierInputs, ClassifierTraining
from unfreeze.recipes.suggest.config import SuggestConfig

SUGGESTION = "suggestion.json"  # the file that makes a finished suggestion in --out
WARMUP_STEPS = 3  # measured steps per candidate before the plan: the first pays one-time costs and is left out,
# the second still often runs slower on small models (measured: 1.5x), so two are left to take the median of
RGN_BATCHES = 1  # one batch already orders the stages; each costs a full backward pass


def parse_budget(text: str) -> tuple[str, float]:
    """`0.2` -> ("share", 0.2); `300s` -> ("seconds", 300.0)."""
    raw = str(text).strip().lower()
    kind = "seconds" if raw.endswith("s") else "share"
    try:
        value = float(raw[:-1] if kind == "seconds" else raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0 or (kind == "share" and value > 1):
        raise UsageError(f"--budget {text!r}: give a share of the sweep's compute in (0, 1], e.g. 0.2, "
                         "or seconds with an s suffix, e.g. 300s")
    return kind, value


def validate(cfg: SuggestConfig) -> list[str]:
    names = cand.parse_candidates(cfg.candidates)
    parse_budget(cfg.budget)
    require(cfg.seeds >= 1, f"--seeds must be at least 1 (got {cfg.seeds})")
    require(cfg.eta >= 2, f"--eta must be at least 2 (got {cfg.eta})")
    require(cfg.top >= 1, f"--top must be at least 1 (got {cfg.top})")
    require(cfg.feature_cache_budget_gb is None or cfg.feature_cache_budget_gb > 0,
            "--feature_cache_budget_gb must be positive")
    if cfg.write_sweep is not None:
        target = check_output_path(cfg.write_sweep, "--write_sweep", kind="file")
        require(not target.exists() or cfg.overwrite, f"--write_sweep {cfg.write_sweep} exists; pass --overwrite to "
                "replace it, or choose another file name")
    if cfg.export is not None:
        check_output_path(cfg.export, "--export")
    return names


def run(cfg: SuggestConfig) -> dict:
    """setup -> signals -> measured steps -> successive halving -> the table, suggestion.json (last), the sweep
    file and the exports, in the one run lifecycle: an --out holding a suggestion is refused without --overwrite.
    Returns suggestion.json's content."""
    clock = cost.WorkClock()  # what suggest spends, from here
    names = validate(cfg)
    with run_folder("suggest", cfg.out, cfg.overwrite, markers=(SUGGESTION,), tracking=Tracking.of(cfg)) as folder:
        setup = prepare(cfg, folder.log)  # every input checked before anything is written
        result = suggest(cfg, names, setup, clock, folder)
        print(output.render_table(result["candidates"], result["cost_model_error"]))
        print(output.summary_lines(result))
        if cfg.write_sweep is not None:
            seeds = [cfg.seed + i for i in range(cfg.seeds)]
            text = output.sweep_text(result["candidates"], setup.classify, seeds, cfg.top, result["sweep"]["cache_dir"])
            output.write_sweep(cfg.write_sweep, text)
            print(f"written: {cfg.write_sweep} (unfreeze sweep {cfg.write_sweep})")
        if cfg.export is not None:
            result["export"] = output.write_exports(Path(cfg.export), result, setup, cfg.top)
            print(f"written: {cfg.export} (the pick and the top {cfg.top} for PEFT, axolotl, LLaMA-Factory; export.json)")
        if folder.out is not None:
            output.plot(result["candidates"], folder.out / "suggestion.png")
            folder.finish(result, file=SUGGESTION)
            print(f"written: {folder.out / SUGGESTION}, {folder.out / 'suggestion.png'}")
    return result


def cache_folder(cfg: SuggestConfig) -> Path:
    from unfreeze.data.sms_spam import cache_dir

    return Path(cfg.feature_cache_dir).expanduser() if cfg.feature_cache_dir else cache_dir() / "features"


def make_arms(names: list[str], setup: Setup) -> list[Arm]:
    """Each candidate's classifier with exactly what classify trains for it (`make_trainable`), not yet a loop.

    A copy of the model built with the run's seed is what classify builds with that seed (the same weights
    and head); copying skips re-initialising every weight (seconds per candidate)."""
    arms = []
    for name in names:
        model = copy.deepcopy(setup.base_model)
        summary = make_trainable(model, setup.candidate(name), setup.after_head)
        arms.append(Arm(name, summary, cand.start_stage(model)))
        arms[-1].loop = model  # the loop is made once the cache exists (`start_loops`)
    return arms


def start_loops(arms: list[Arm], setup: Setup, cache) -> None:
    """Each candidate's training loop: classify's, reading the shared cache where its frozen prefix ends."""
    autocast = None if setup.classify.precision == "fp32" else torch.bfloat16
    for arm in arms:
        model = arm.loop.to(setup.device)
        reader = cache_reader(cache, arm.start, model.final_stage)
        inputs = ClassifierInputs(model, setup.tokens, reader, setup.device, autocast)
        arm.loop = ClassifierTraining(model, inputs, setup.labels, schedule(setup.candidate(arm.name)), setup.device,
                                      periodic_scores=False)


def cache_reader(cache, start: int, final_stage: int):
    """The disk cache's reader for a candidate starting at stage `start`, or None (it runs from the tokens)."""
    if start == final_stage + 1 or (2 <= start <= final_stage and start in cache.boundaries):
        return cache.reader(start)
    return None


def report_round(rung, folder: Run, log, by_loss: bool = False) -> None:
    """A round's scores: said, and to the tracker (each candidate's validation accuracy and loss at its steps; with
    `by_loss`, an sft round's, its loss alone)."""
    kept = ", ".join(rung.kept)
    scores = "; ".join(f"{name} {f'loss {loss:.4f}' if by_loss else f'{acc:.3f}'} at {rung.steps[name]} steps"
                       for name, (acc, loss) in rung.scores.items())
    log.info(f"round done: {scores}; kept {kept}")
    for name, (accuracy, loss) in rung.scores.items():
        numbers = {f"{name}/val_loss": loss} if by_loss else {f"{name}/val_acc": accuracy, f"{name}/val_loss": loss}
        folder.track(numbers, rung.steps[name])


def rgn_signal(setup: Setup, batch_size: int) -> list[float]:
    model, tokens, labels = setup.base_model, setup.tokens["train"], setup.labels["train"]

    def batch(i):
        ids = torch.stack(tokens[i * batch_size:(i + 1) * batch_size]).to(setup.device)
        ids = ids[:, :model.needed_length(ids)]  # the positions the pooled output depends on
        target = torch.tensor(labels[i * batch_size:(i + 1) * batch_size], device=setup.device)
        return lambda: F.cross_entropy(model(ids).float(), target)

    count = max(1, min(RGN_BATCHES, len(tokens) // batch_size))
    return signals.relative_gradient_norms(model, [batch(i) for i in range(count)])


def suggest(cfg: SuggestConfig, names: list[str], setup: Setup, clock: cost.WorkClock, folder: Run) -> dict:
    """Everything after setup (`clock` started before it); returns suggestion.json's content."""
    log = folder.log
    base = setup.base_model
    cand.check_bounds(names, base.num_blocks)
    for p in base.parameters():
        p.requires_grad_(False)
    clock.use_cpu = setup.device.type != "cuda"
    arms = make_arms(names, setup)
    shared = open_shared_cache(cfg, setup, arms)
    log.info(f"feature cache {'built' if shared.built else 'reused'}: {shared.cache.folder} "
             f"({shared.cache.nbytes() / 2**20:.1f} MiB)")
    start_loops(arms, setup, shared.cache)
    probes = signals.probe_accuracies(shared.cache, setup.labels, base.final_stage + 1)
    rgn = rgn_signal(setup, cfg.batch_size)
    machine = measure_candidates(arms, setup)
    if note := cost.busy_note(machine):
        log.warning(note)
    shape = cost.RunShape(cfg.num_epochs, cfg.batch_size, {k: len(v) for k, v in setup.labels.items()},
                          cfg.eval_every, cfg.eval_batches)
    evidence = {a.name: candidate_evidence(a, shape, setup, rgn, probes) for a in arms}
    fixed = cost.Fixed(setup.load_s, shared.key_s, shared.build_s, setup.once_s, setup.check_s)
    planned = predict_sweep(cfg, shape, arms, fixed, shared, setup)  # what the budget is a share of
    kind, value = parse_budget(cfg.budget)
    budget_s = value * planned["total_s"] if kind == "share" else value
    spent = clock if kind == "share" else clock.wall  # a share of compute counts work; seconds count the clock
    budget_name = f"{cfg.budget} ({budget_s:.1f}s in all)"
    remaining = budget_s - spent()
    halving.first_rung_steps(arms, remaining, cfg.eta, budget_name)  # a budget short of one round: said, nothing written
    folder.start(to_dict(cfg))
    log.info(f"halving: {len(arms)} candidates, {remaining:.0f}s of the budget left; rounds keep 1/{cfg.eta}")
    result = halving.successive_halving(arms, remaining, cfg.eta, budget_name, clock=spent,
                                        on_rung=lambda rung: report_round(rung, folder, log),
                                        on_round=lambda count, target: log.info(
                                            f"round: training {count} candidate(s) to {target} steps ..."))
    sweep = predict_sweep(cfg, shape, arms, fixed, shared, setup)  # again, from every step measured
    rows = ranked_rows(arms, evidence, sweep["candidates"], result, len(setup.labels["validation"]))
    confirm = predict_sweep(cfg, shape, [a for r in rows[:cfg.top] for a in arms if a.name == r["name"]], fixed,
                            shared, setup, cached=frozenset(shared.cache.boundaries))
    return outcome(cfg, rows, result, sweep, planned, confirm, shared, fixed, machine, budget_s, kind, clock, probes,
                   rgn, setup)


@dataclass
class SharedCache:
    """suggest's shared frozen-prefix cache, what was on disk before it, and what hashing and building cost."""

    cache: disk.DiskCache
    built: bool
    before: frozenset | None  # hidden boundaries its key held on disk before suggest (None: no complete cache)
    key_s: float  # seconds of work hashing the frozen weights for the key (every cached run of the sweep pays it)
    build_s: float  # seconds of work of one build (measured here, or the cache's own record when it was reused)


def open_shared_cache(cfg: SuggestConfig, setup: Setup, arms: list[Arm]) -> SharedCache:
    """The shared cache of every candidate's boundary, reused or built, and what it was on disk before."""
    base, folder, precision = setup.base_model, cache_folder(cfg), setup.classify.precision
    use_cpu = setup.device.type != "cuda"
    boundaries = sorted({a.start for a in arms if 2 <= a.start <= base.final_stage})
    budget_bytes = cfg.feature_cache_budget_gb * 2**30 if cfg.feature_cache_budget_gb is not None else None
    key, key_wall, key_cpu = cost.timed(lambda: disk.cache_key(base, setup.tokens, precision, setup.device), use_cpu)
    found = disk.open_cache(folder, key)
    # classify builds in batches of max(batch size, 16) (`classify.prepare_cache`): the same here, so a sweep
    # reading this cache reads what its own build would have stored.
    build_batch = max(cfg.batch_size, 16)
    (cache, built), wall, cpu = cost.timed(lambda: disk.get_or_build(
        base, setup.tokens, folder, boundaries, precision, setup.device, budget_bytes, build_batch), use_cpu)
    if built:  # the call hashed the weights again before building: that part is not the build
        build_s = cost.work_seconds(max(wall - key_wall, 0.0), None if cpu is None else max(cpu - key_cpu, 0.0))
    else:
        build_s = float(cache.meta["build_s"])
    return SharedCache(cache, built, None if found is None else frozenset(found.boundaries),
                       cost.work_seconds(key_wall, key_cpu), build_s)


def measure_candidates(arms: list[Arm], setup: Setup) -> dict:
    """A few steps and one validation pass of every candidate; returns how busy the machine was meanwhile."""
    use_cpu = setup.device.type != "cuda"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    def measure():
        for arm in arms:
            arm.advance(WARMUP_STEPS)
            arm.evaluate()

    _, wall, cpu = cost.timed(measure, use_cpu)
    load = max(load, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cost.machine_state(wall, cpu, torch.get_num_threads(), cores, load)


def candidate_cost(arm: Arm, shared: SharedCache, final_stage: int, num_blocks: int) -> cost.CandidateCost:
    """What the candidate's run reads from the shared cache and its measured pieces."""
    if arm.start == 0:
        kind = "none"
    elif arm.start == final_stage + 1:
        kind = "pooled"
    else:  # a boundary the disk budget left out: classify then builds it in memory, every run
        kind = "hidden" if arm.start in shared.cache.boundaries else "memory"
    own = shared.build_s * cost.cache_build_share(arm.start, num_blocks) if kind == "memory" else 0.0
    return cost.CandidateCost(arm.name, kind, arm.start, arm.step_cost(), arm.eval_seconds_per_example(), own)


def predict_sweep(cfg: SuggestConfig, shape: cost.RunShape, arms: list[Arm], fixed: cost.Fixed, shared: SharedCache,
                  setup: Setup, cached: frozenset | None | str = "before") -> dict:
    """`unfreeze sweep` over `arms` x --seeds, reading suggest's cache folder (the sweep file suggest writes
    does), with what that folder held before suggest (`cached="before"`) or `cached`."""
    base = setup.base_model
    costs = [candidate_cost(a, shared, base.final_stage, base.num_blocks) for a in arms]
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    held = shared.before if cached == "before" else cached
    sweep = cost.predict_sweep(shape, costs, fixed, seeds, held, setup.inputs.source.random, cfg.seed)
    # Per candidate: a run reading a ready cache, and a run that has to build it first (the first of the sweep).
    sweep["candidates"] = {c.name: {"cache": c.cache, "step_s": round(c.step_s, 5),
                                    "ready": cost.run_seconds(shape, c, fixed),
                                    "alone": cost.run_seconds(shape, c, fixed, builds_shared=c.wanted is not None)}
                           for c in costs}
    sweep["seeds"] = seeds
    return sweep


def candidate_evidence(arm: Arm, shape: cost.RunShape, setup: Setup, rgn: list[float], probes: list[float]) -> dict:
    """What does not change once measured: peak memory, the signals' evidence, the cache path it trains from."""
    model, summary = arm.model, arm.summary
    num_blocks = model.num_blocks
    stages = [*model.stage_modules(), [model.head]]  # the head last, as in the gradient-norm signal
    trains = [any(p.requires_grad for m in mods for p in m.parameters()) for mods in stages]
    first = trains.index(True)
    with_grad = num_blocks - max(first, 1) + 1 if first <= num_blocks else 0  # blocks that backward runs through
    heads = int(model.body.config.get_text_config().num_attention_heads)  # GPT-2's n_head is an alias of it
    peak = cost.predict_peak_bytes(summary.total_params, summary.trainable_params, shape.batch_size,
                                   setup.max_length, model.hidden_size, with_grad, heads)
    start_boundary = max(arm.start, 1)
    reader = arm.loop.inputs.reader
    cache_kind = "none" if reader is None else "pooled" if reader.start_stage > model.final_stage else "hidden"
    return {"peak_bytes": peak, "probe": max(probes[start_boundary - 1:]) if probes else float("nan"),
            "rgn_share": sum(r for r, t in zip(rgn, trains) if t) / max(sum(rgn), 1e-12),
            "cache": cache_kind, "trainable_params": summary.trainable_params,
            "total_params": summary.total_params}


def ranked_rows(arms: list[Arm], evidence: dict, predicted: dict, result: halving.HalvingResult,
                n_val: int) -> list[dict]:
    """One row per candidate, best first: its score, the cost model's prediction of its run, its evidence."""
    rows = []
    for arm in arms:
        steps, accuracy, loss = arm.history[-1]
        rounds = sum(arm.name in rung.scores for rung in result.rungs)
        e, p = evidence[arm.name], predicted[arm.name]
        rows.append({
            "name": arm.name, "predicted_val_acc": round(accuracy, 4),
            "interval": output.wilson_interval(accuracy, n_val),
            "trainable_params": e["trainable_params"], "total_params": e["total_params"],
            "predicted_time_s": p["ready"]["run_s"], "predicted_time_parts": p["ready"],
            "predicted_alone_s": p["alone"]["run_s"], "predicted_peak_bytes": e["peak_bytes"], "start_stage": arm.start,
            "evidence": {"steps": steps, "total_steps": arm.total_steps, "rounds": rounds, "val_loss": round(loss, 5),
                         "val_history": [list(h) for h in arm.history], "probe": e["probe"],
                         "rgn_share": round(e["rgn_share"], 4), "step_s": p["step_s"], "cache": e["cache"],
                         "full_run": steps >= arm.total_steps},
        })
    rows.sort(key=output.rank_key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def outcome(cfg: SuggestConfig, rows: list[dict], result: halving.HalvingResult, sweep: dict, planned: dict,
            confirm: dict, shared: SharedCache, fixed: cost.Fixed, machine: dict, budget_s: float, budget_kind: str,
            clock: cost.WorkClock, probes: list[float], rgn: list[float], setup: Setup) -> dict:
    """suggestion.json's content: the ranking, what suggest spent against the sweep it replaces, the evidence."""
    wall, work = clock.wall(), clock()
    sweep_s = sweep["total_s"]
    return {
        "pick": rows[0]["name"], "candidates": rows, "budget": cfg.budget, "budget_s": round(budget_s, 2),
        "budget_counts": "work" if budget_kind == "share" else "wall",
        "spent_s": round(wall, 2), "spent_work_s": round(work, 2), "spent_cpu_s": round(clock.cpu(), 2),
        "sweep_predicted_s": round(sweep_s, 2), "spent_share": round(wall / sweep_s, 4),
        "spent_work_share": round(work / sweep_s, 4), "cost_model_error": cost.MEASURED_RUN_ERROR,
        "sweep": {"seeds": sweep["seeds"], "runs": sweep["runs"], "builds": sweep["builds"],
                  "build_s": sweep["build_s"], "checks_s": sweep["checks_s"],
                  "cached_before": None if shared.before is None else sorted(shared.before),
                  "random_weights": setup.inputs.source.random, "cache_dir": str(shared.cache.folder.parent),
                  "budget_basis_s": planned["total_s"]},
        "confirm_sweep": {"top": cfg.top, "predicted_s": confirm["total_s"], "builds": confirm["builds"]},
        "fixed": {"load_s": round(fixed.load_s, 3), "once_s": round(fixed.once_s, 3),
                  "check_s": round(fixed.check_s, 3), "cache_key_s": round(fixed.key_s, 3),
                  "cache_build_s": round(fixed.build_s, 3), "cache_build_measured": shared.built},
        "machine": machine, "seeds": cfg.seeds,
        "halving": {"eta": cfg.eta, "first_round_steps": result.first_rung_steps,
                    "planned_s": round(result.planned_s, 2), "stopped_early": result.stopped_early,
                    "rounds": [vars(r) for r in result.rungs]},
        "signals": {"probe_val_acc_per_boundary": probes,
                    "relative_gradient_norm_per_stage": [round(x, 6) for x in rgn]},
        "cache": {"folder": str(shared.cache.folder), "built": shared.built, "bytes": shared.cache.nbytes(),
                  "hidden_boundaries": shared.cache.boundaries, "build_s": shared.cache.meta["build_s"]},
        "model_build_s": round(setup.build_s, 3), "config": to_dict(cfg),
    }
