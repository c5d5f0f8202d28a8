"""`unfreeze suggest` against the exhaustive `unfreeze sweep` it replaces, both really run, in one process.

    python benchmarks/bench_suggest.py [--model smollm2|gpt2-small-random] [--sizes LxW,LxW,...]
        [--candidates last_layer,last_block,last_blocks:4,last_blocks:10,lora] [--n_train 1045] [--n_val 149]
        [--n_test 300] [--epochs 1] [--context_length longest_training_example] [--batch_size 8] [--lr 5e-5] [--seeds 3] [--budget 0.2]
        [--threads 1] [--json FILE]

For each model (one `--model`, or with `--sizes` one random-weight GPT-2-shaped model per size, L blocks of
width W): `unfreeze suggest` runs as the command does (`recipes.suggest.recipe.run`, its own fresh feature
cache), then the sweep it replaces runs with the sweep's own machinery (`sweep.runner`: every row's check
first, then candidate x seed classify runs sharing `<out>/features`), each run timed in wall and CPU time.
Suggest runs first, as a user's would in a fresh process (it pays the imports; the sweep after it does not,
so the sweep's predicted one-off costs are left out of the comparison). Both use report_to none, and the
sweep save_model false: the cost model predicts training and evaluation, not a tracker or saving final/.

Printed: the sweep's table (mean over seeds), the suggestion, and
  * regret: best mean test accuracy in the sweep - mean test accuracy of the pick's sweep runs (points);
  * rank agreement: Spearman's rank correlation of suggest's order with the sweep's mean validation and test
    accuracy;
  * the measured compute ratio: suggest's wall (and work) time / the sweep's;
  * the cost model's error: predicted / measured - 1, for every run (against its work time, min(wall, CPU),
    and its wall time) and for the whole sweep; and Spearman of predicted against measured run times (does
    the model order the candidates' costs right?);
  * how busy the machine was in each phase (the share of a core this process got; the load average).
Every candidate is a classify preset, so the sweep runs them all. `--model smollm2` is the pretrained
SmolLM2-135M GGUF (`python -m unfreeze.models.gguf`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from unfreeze.config import config_from_mapping
from unfreeze.data import sms_spam
from unfreeze.errors import UsageError
from unfreeze.files import read_json
from unfreeze.recipes.suggest import cost
from unfreeze.recipes.suggest.config import SuggestConfig
from unfreeze.recipes.suggest.output import render_table, row_name
from unfreeze.recipes.suggest.recipe import run as run_suggest
from unfreeze.recipes.suggest.signals import spearman
from unfreeze.sweep import runner
from unfreeze.sweep.executors import LocalExecutor, final_dir
from unfreeze.sweep.spec import load_sweep

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_SMALL = "12x768"
ISSUE_CANDIDATES = "last_layer,last_block,last_blocks:4,last_blocks:10,lora"


def write_subset(folder: Path, n_train: int, n_val: int, n_test: int | None = None) -> None:
    """The first n_train / n_val / n_test (default n_val) examples of the reference split (1045 / 149 / 300)."""
    n_test = n_val if n_test is None else n_test
    splits = sms_spam.load_splits(str(SHARED / "sms_spam" / "SMSSpamCollection"))
    folder.mkdir(parents=True, exist_ok=True)
    splits.train[:n_train].to_csv(folder / "train.csv", index=False)
    splits.validation[:n_val].to_csv(folder / "validation.csv", index=False)
    splits.test[:n_test].to_csv(folder / "test.csv", index=False)


def gpt2_config(size: str) -> str:
    """`LxW` -> a GPT-2 model_config of L blocks of width W (heads of 64, at least one)."""
    layers, width = (int(x) for x in size.lower().split("x"))
    return json.dumps({"n_layer": layers, "n_embd": width, "n_head": max(1, width // 64)})


def model_options(args, size: str | None) -> dict:
    """Options shared by suggest and every run of the sweep."""
    options = {"num_epochs": args.epochs, "context_length": args.context_length, "batch_size": args.batch_size,
               "lr": args.lr, "device": args.device, "seed": 123, "report_to": "none"}
    if size is not None or args.model == "gpt2-small-random":
        options.update(weights="random", model_config=gpt2_config(size or GPT2_SMALL),
                       tokenizer=str(SHARED / "gpt2_bpe"))
    else:
        from unfreeze.models.gguf import installed_smollm2

        options.update(model=str(installed_smollm2()), weights="pretrained")
    return options


class TimedExecutor(LocalExecutor):
    """The sweep's local executor, with every run's wall and CPU seconds recorded."""

    def __init__(self, command, out: Path):
        super().__init__(command, out)
        self.times: dict[tuple[str, int], tuple[float, float]] = {}

    def wait_one(self):
        (unit, outcome), wall, cpu = cost.timed(super().wait_one)
        self.times[(unit.row, unit.seed)] = (wall, cpu)
        return unit, outcome


def drive_timed(sweep, out: Path, features: Path | None = None) -> tuple[dict, dict]:
    """Every row checked, then every unit run by the sweep's own runner: (each unit's (wall, CPU), the counts)."""
    runner.check_rows(sweep, sweep.rows, out)
    with runner.sweep_lock(out):
        runner.write_sweep_json(sweep, sweep.rows, out)
        units, done = runner.plan(sweep, sweep.rows, out, features, "none")
        with TimedExecutor(sweep.command, out) as executor:
            counts = runner.drive(units, executor, out, len(units) + done, done)
    return executor.times, counts


def run_real_sweep(args, options: dict, names: list[str], folder: Path) -> dict:
    """`unfreeze sweep` over names x seeds (its checks, its shared cache in <out>/features), timed."""
    sweep_file = folder / "sweep.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"command": "classify", "seeds": [123 + i for i in range(args.seeds)],
            "settings": {**{k: v for k, v in options.items() if k != "seed"}, "save_model": False},
            "rows": [{"name": row_name(n), "options": {"trainable_layers": n}} for n in names]}
    sweep_file.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    sweep, out = load_sweep(sweep_file), folder / "out"
    load = os.getloadavg()[0]

    def everything():
        _, *checks = cost.timed(lambda: runner.check_rows(sweep, sweep.rows, out))  # every row, before any run
        with runner.sweep_lock(out):
            runner.write_sweep_json(sweep, sweep.rows, out)
            units, done = runner.plan(sweep, sweep.rows, out, out / "features", "none")
            with TimedExecutor(sweep.command, out) as executor:
                counts = runner.drive(units, executor, out, len(units) + done, done)
        return cost.work_seconds(*checks), executor.times, counts

    (checks_s, times, counts), wall, cpu = cost.timed(everything)
    if counts["failed"]:
        raise SystemExit(f"the sweep had {counts['failed']} failed run(s): see {out}/failed.json")
    runs = []
    for name in names:
        for seed in body["seeds"]:
            metrics = read_json(final_dir(out, row_name(name), seed) / "metrics.json")
            run_wall, run_cpu = times[(row_name(name), seed)]
            runs.append({"name": name, "seed": seed, "wall_s": run_wall, "cpu_s": run_cpu,
                         "work_s": cost.work_seconds(run_wall, run_cpu), "metrics": metrics})
    load = max(load, os.getloadavg()[0])
    return {"runs": runs, "wall_s": wall, "cpu_s": cpu, "work_s": cost.work_seconds(wall, cpu), "checks_s": checks_s,
            "machine": cost.machine_state(wall, cpu, torch.get_num_threads(), os.cpu_count() or 1, load)}


def sweep_table(runs: list[dict], names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        seeds = [r for r in runs if r["name"] == name]

        def mean(key, seeds=seeds):
            return statistics.mean(r["metrics"][key] for r in seeds)

        rows.append({"candidate": name, "val_acc": round(mean("val_acc"), 4), "test_acc": round(mean("test_acc"), 4),
                     "test_sd": round(statistics.pstdev(r["metrics"]["test_acc"] for r in seeds), 4),
                     "work_s": round(statistics.mean(r["work_s"] for r in seeds), 2),
                     "wall_s": round(statistics.mean(r["wall_s"] for r in seeds), 2),
                     "trainable_params": seeds[0]["metrics"]["trainable_params"]})
    return rows


def cost_errors(result: dict, sweep: dict) -> dict:
    """The cost model against every measured run and the whole sweep (predicted / measured - 1)."""
    predicted = {(r["name"], r["seed"]): r for r in result["sweep"]["runs"]}
    per_run = []
    for run in sweep["runs"]:
        p = predicted[(run["name"], run["seed"])]
        per_run.append({"name": run["name"], "seed": run["seed"], "builds": p["builds"], "predicted_s": p["run_s"],
                        "work_s": round(run["work_s"], 3), "wall_s": round(run["wall_s"], 3),
                        "error_work": round(p["run_s"] / run["work_s"] - 1, 3),
                        "error_wall": round(p["run_s"] / run["wall_s"] - 1, 3)})
    # suggest ran first in this process and paid its one-off costs: the sweep after it did not
    total = result["sweep_predicted_s"] - result["fixed"]["once_s"]
    names = list(dict.fromkeys(r["name"] for r in per_run))

    def mean(name, key):
        return statistics.mean(r[key] for r in per_run if r["name"] == name)

    checks = result["sweep"]["checks_s"] - result["fixed"]["once_s"]
    return {"runs": per_run, "checks": {"predicted_s": round(checks, 3), "work_s": round(sweep["checks_s"], 3)},
            "max_abs_error_work": max(abs(r["error_work"]) for r in per_run),
            "max_abs_error_wall": max(abs(r["error_wall"]) for r in per_run),
            "sweep_error_work": round(total / sweep["work_s"] - 1, 3),
            "sweep_error_wall": round(total / sweep["wall_s"] - 1, 3),
            "cost_order_spearman": round(spearman([mean(n, "predicted_s") for n in names],
                                                  [mean(n, "work_s") for n in names]), 3)}


def one_model(args, size: str | None, data: Path, folder: Path) -> dict:
    """suggest, then the sweep it replaces, on one model; every number compared."""
    options = {**model_options(args, size), "data": str(data)}
    names = args.candidates.split(",")
    cfg = config_from_mapping(SuggestConfig, {**options, "candidates": args.candidates, "budget": args.budget,
                                              "seeds": args.seeds, "out": str(folder / "suggest"),
                                              "feature_cache_dir": str(folder / "suggest_features")})
    result, suggest_wall, suggest_cpu = cost.timed(lambda: run_suggest(cfg))
    sweep = run_real_sweep(args, options, names, folder / "sweep")
    table = sweep_table(sweep["runs"], names)
    best = max(table, key=lambda t: t["test_acc"])
    picked = next(t for t in table if t["candidate"] == result["pick"])
    rank = {r["name"]: r["rank"] for r in result["candidates"]}
    suggest_work = cost.work_seconds(suggest_wall, suggest_cpu)
    return {
        "model": size or args.model, "pick": result["pick"], "best_in_sweep": best["candidate"],
        "regret_points": round(100 * (best["test_acc"] - picked["test_acc"]), 2),
        "rank_agreement": {key: round(spearman([-rank[t["candidate"]] for t in table], [t[key] for t in table]), 3)
                           for key in ("val_acc", "test_acc")},
        "suggest_wall_s": round(suggest_wall, 1), "suggest_work_s": round(suggest_work, 1),
        "sweep_wall_s": round(sweep["wall_s"], 1), "sweep_work_s": round(sweep["work_s"], 1),
        "compute_ratio_wall": round(suggest_wall / sweep["wall_s"], 3),
        "compute_ratio_work": round(suggest_work / sweep["work_s"], 3),
        "sweep_predicted_s": result["sweep_predicted_s"], "stopped_early": result["halving"]["stopped_early"],
        "steps": {r["name"]: f"{r['evidence']['steps']}/{r['evidence']['total_steps']}" for r in result["candidates"]},
        "cost_model": cost_errors(result, sweep), "machine": {"suggest": result["machine"], "sweep": sweep["machine"]},
        "sweep_table": table, "suggestion": result,
    }


def report(summary: dict) -> None:
    print(f"\n## {summary['model']}: the exhaustive sweep (mean of the seeds; work = min(wall, CPU))")
    print("| candidate | val acc | test acc (sd) | work s | wall s | trainable |\n|---|---|---|---|---|---|")
    for t in summary["sweep_table"]:
        print(f"| {t['candidate']} | {t['val_acc']:.3f} | {t['test_acc']:.3f} ({t['test_sd']:.3f}) | {t['work_s']} | "
              f"{t['wall_s']} | {t['trainable_params']:,} |")
    result = summary["suggestion"]
    print("\n## the suggestion\n" + render_table(result["candidates"], result["cost_model_error"]))
    print("\n## the cost model, run by run (predicted / measured - 1)")
    print("| candidate | seed | builds | predicted s | work s | wall s | error (work) | error (wall) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in summary["cost_model"]["runs"]:
        print(f"| {r['name']} | {r['seed']} | {'yes' if r['builds'] else ''} | {r['predicted_s']:.2f} | "
              f"{r['work_s']:.2f} | {r['wall_s']:.2f} | {r['error_work']:+.0%} | {r['error_wall']:+.0%} |")
    brief = {k: v for k, v in summary.items() if k not in ("sweep_table", "suggestion")}
    brief["cost_model"] = {k: v for k, v in summary["cost_model"].items() if k != "runs"}
    print("\n## summary\n" + json.dumps(brief, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "gpt2-small-random"])
    parser.add_argument("--sizes", help="random GPT-2-shaped models instead, one per LxW (e.g. 2x128,6x384,12x768)")
    parser.add_argument("--candidates", default=ISSUE_CANDIDATES)
    parser.add_argument("--n_train", type=int, default=1045)
    parser.add_argument("--n_val", type=int, default=149)
    parser.add_argument("--n_test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--context_length", default="longest_training_example")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="0.2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time is then the work itself, see recipes/suggest/cost.py)")
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args()
    if not (SHARED / "sms_spam").is_dir():
        print(f"needs {SHARED}/sms_spam and gpt2_bpe", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_subset(data, args.n_train, args.n_val, args.n_test)
        for size in args.sizes.split(",") if args.sizes else [None]:
            try:
                summaries.append(one_model(args, size, data, Path(tmp) / (size or args.model)))
            except UsageError as err:  # e.g. a budget the fixed costs already use up: a result, not a crash
                print(f"{size or args.model}: unfreeze suggest refused: {err}", flush=True)
                summaries.append({"model": size or args.model, "suggest_error": str(err)})
                continue
            report(summaries[-1])
    if args.sizes:
        print("\n## the cost model on every size\n| model | max |error| per run (work) | (wall) | sweep (work) | "
              "cost order (Spearman) |\n|---|---|---|---|---|")
        for s in summaries:
            if "cost_model" in s:
                c = s["cost_model"]
                print(f"| {s['model']} | {c['max_abs_error_work']:.0%} | {c['max_abs_error_wall']:.0%} | "
                      f"{c['sweep_error_work']:+.0%} | {c['cost_order_spearman']} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "models": summaries},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
