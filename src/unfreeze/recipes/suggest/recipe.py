"""`unfreeze suggest`: rank candidate trainable-parameter choices at a fraction of the sweep's cost.

setup (data, models, one shared on-disk cache of the frozen network) -> cheap signals (per-layer
probes, relative gradient norms) -> measure a few steps of every candidate (cost model) -> successive
halving within the budget -> the ranked table, suggestion.json, a PNG and (optionally) a sweep file.
"""

from __future__ import annotations

import copy
import math
import time
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
WARMUP_STEPS = 2  # measured steps per candidate before the plan (the first pays one-time costs)
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
    started = time.perf_counter()
    names = validate(cfg)
    with run_folder("suggest", cfg.out, cfg.overwrite, markers=(SUGGESTION,), tracking=Tracking.of(cfg)) as folder:
        setup = prepare(cfg, folder.log)  # every input checked before anything is written
        result = suggest(cfg, names, setup, started, folder)
        print(output.render_table(result["candidates"]))
        print(output.summary_lines(result))
        if cfg.write_sweep is not None:
            seeds = [cfg.seed + i for i in range(cfg.seeds)]
            output.write_sweep(cfg.write_sweep, output.sweep_text(result["candidates"], setup.classify, seeds, cfg.top))
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


def report_round(rung, folder: Run, log) -> None:
    """A round's scores: said, and to the tracker (each candidate's validation accuracy and loss at its steps)."""
    kept = ", ".join(rung.kept)
    scores = "; ".join(f"{name} {acc:.3f} at {rung.steps[name]} steps" for name, (acc, _) in rung.scores.items())
    log.info(f"round done: {scores}; kept {kept}")
    for name, (accuracy, loss) in rung.scores.items():
        folder.track({f"{name}/val_acc": accuracy, f"{name}/val_loss": loss}, rung.steps[name])


def rgn_signal(setup: Setup, batch_size: int) -> list[float]:
    model, tokens, labels = setup.base_model, setup.tokens["train"], setup.labels["train"]

    def batch(i):
        ids = torch.stack(tokens[i * batch_size:(i + 1) * batch_size]).to(setup.device)
        ids = ids[:, :model.needed_length(ids)]  # the positions the pooled output depends on
        target = torch.tensor(labels[i * batch_size:(i + 1) * batch_size], device=setup.device)
        return lambda: F.cross_entropy(model(ids).float(), target)

    count = max(1, min(RGN_BATCHES, len(tokens) // batch_size))
    return signals.relative_gradient_norms(model, [batch(i) for i in range(count)])


def suggest(cfg: SuggestConfig, names: list[str], setup: Setup, started: float, folder: Run) -> dict:
    """Everything after setup; returns suggestion.json's content."""
    log = folder.log
    base = setup.base_model
    cand.check_bounds(names, base.num_blocks)
    for p in base.parameters():
        p.requires_grad_(False)
    arms = make_arms(names, setup)
    final = base.final_stage
    boundaries = sorted({a.start for a in arms if 2 <= a.start <= final})
    budget_bytes = cfg.feature_cache_budget_gb * 2**30 if cfg.feature_cache_budget_gb is not None else None
    cache, built = disk.get_or_build(base, setup.tokens, cache_folder(cfg), boundaries, setup.classify.precision,
                                     setup.device, budget_bytes)
    log.info(f"feature cache {'built' if built else 'reused'}: {cache.folder} ({cache.nbytes() / 2**20:.1f} MiB)")
    start_loops(arms, setup, cache)
    probes = signals.probe_accuracies(cache, setup.labels, final + 1)
    rgn = rgn_signal(setup, cfg.batch_size)
    for arm in arms:  # measure: a few steps and one validation pass of every candidate
        arm.advance(WARMUP_STEPS)
        arm.evaluate()
    shape = cost.RunShape(cfg.num_epochs, cfg.batch_size, {k: len(v) for k, v in setup.labels.items()},
                          cfg.eval_every, cfg.eval_batches)
    predicted = {a.name: predict(a, shape, cache, setup, rgn, probes) for a in arms}
    sweep_s = sum(cfg.seeds * (p["time"]["run_s"] + setup.build_s) for p in predicted.values())
    kind, value = parse_budget(cfg.budget)
    budget_s = value * sweep_s if kind == "share" else value
    remaining = budget_s - (time.perf_counter() - started)
    budget_name = f"{cfg.budget} ({budget_s:.1f}s in all)"
    halving.first_rung_steps(arms, remaining, cfg.eta, budget_name)  # a budget short of one round: said, nothing written
    folder.start(to_dict(cfg))
    log.info(f"halving: {len(arms)} candidates, {remaining:.0f}s of the budget left; rounds keep 1/{cfg.eta}")
    result = halving.successive_halving(arms, remaining, cfg.eta, budget_name,
                                        on_rung=lambda rung: report_round(rung, folder, log),
                                        on_round=lambda count, target: log.info(
                                            f"round: training {count} candidate(s) to {target} steps ..."))
    rows = ranked_rows(arms, predicted, result, len(setup.labels["validation"]))
    spent = time.perf_counter() - started
    return {
        "pick": rows[0]["name"], "candidates": rows, "budget": cfg.budget, "budget_s": round(budget_s, 2),
        "spent_s": round(spent, 2), "sweep_predicted_s": round(sweep_s, 2), "spent_share": round(spent / sweep_s, 4),
        "seeds": cfg.seeds, "halving": {"eta": cfg.eta, "first_round_steps": result.first_rung_steps,
                                       "planned_s": round(result.planned_s, 2), "stopped_early": result.stopped_early,
                                       "rounds": [vars(r) for r in result.rungs]},
        "signals": {"probe_val_acc_per_boundary": probes, "relative_gradient_norm_per_stage": [round(x, 6) for x in rgn]},
        "cache": {"folder": str(cache.folder), "built": built, "bytes": cache.nbytes(),
                  "hidden_boundaries": cache.boundaries, "build_s": cache.meta["build_s"]},
        "model_build_s": round(setup.build_s, 3), "config": to_dict(cfg),
    }


def predict(arm: Arm, shape: cost.RunShape, cache, setup: Setup, rgn: list[float], probes: list[float]) -> dict:
    """The cost model's prediction and the signals' evidence for one candidate."""
    model, summary = arm.model, arm.summary
    num_blocks = model.num_blocks
    seconds = cost.predict_seconds(shape, arm.step_cost(), arm.eval_seconds_per_example(), cache.meta["build_s"],
                                   arm.start, num_blocks)
    stages = [*model.stage_modules(), [model.head]]  # the head last, as in the gradient-norm signal
    trains = [any(p.requires_grad for m in mods for p in m.parameters()) for mods in stages]
    first = trains.index(True)
    with_grad = num_blocks - max(first, 1) + 1 if first <= num_blocks else 0  # blocks that backward runs through
    heads = int(model.body.config.get_text_config().num_attention_heads)  # GPT-2's n_head is an alias of it
    peak = cost.predict_peak_bytes(summary.total_params, summary.trainable_params, shape.batch_size,
                                   setup.max_length, model.hidden_size, with_grad, heads)
    start_boundary = arm.start if arm.start >= 1 else 1
    reader = arm.loop.inputs.reader
    cache_kind = "none" if reader is None else "pooled" if reader.start_stage > model.final_stage else "hidden"
    return {"time": seconds, "peak_bytes": peak, "step_s": round(arm.step_cost(), 5),
            "probe": max(probes[start_boundary - 1:]) if probes else float("nan"),
            "rgn_share": sum(r for r, t in zip(rgn, trains) if t) / max(sum(rgn), 1e-12),
            "cache": cache_kind, "trainable_params": summary.trainable_params,
            "total_params": summary.total_params}


def ranked_rows(arms: list[Arm], predicted: dict, result: halving.HalvingResult, n_val: int) -> list[dict]:
    rows = []
    for arm in arms:
        steps, accuracy, loss = arm.history[-1]
        rounds = sum(arm.name in rung.scores for rung in result.rungs)
        p = predicted[arm.name]
        rows.append({
            "name": arm.name, "predicted_val_acc": round(accuracy, 4), "interval": output.wilson_interval(accuracy, n_val),
            "trainable_params": p["trainable_params"], "total_params": p["total_params"],
            "predicted_time_s": p["time"]["run_s"], "predicted_time_parts": p["time"],
            "predicted_peak_bytes": p["peak_bytes"], "start_stage": arm.start,
            "evidence": {"steps": steps, "total_steps": arm.total_steps, "rounds": rounds, "val_loss": round(loss, 5),
                         "val_history": [list(h) for h in arm.history], "probe": p["probe"],
                         "rgn_share": round(p["rgn_share"], 4), "step_s": p["step_s"], "cache": p["cache"],
                         "full_run": steps >= arm.total_steps},
        })
    rows.sort(key=output.rank_key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows
