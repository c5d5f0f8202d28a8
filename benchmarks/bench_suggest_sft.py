"""`unfreeze suggest --task sft` against the exhaustive sft sweep it replaces, both really run, in one process.

    python benchmarks/bench_suggest_sft.py [--model smollm2] [--data ../shared/data/gsm8k] [--train_limit 48]
        [--val_fraction 0.25] [--max_length 256] [--epochs 1] [--batch_size 4] [--lr 1e-4] [--seeds 3]
        [--budget 0.2] [--candidates last_layer,last_block,last_blocks:4,mlp:last_blocks:4,norms,lora,all]
        [--base FILE.yaml] [--out runs/bench_suggest_sft] [--json FILE]

`unfreeze suggest --task sft` runs first, as a user's would in a fresh process (`recipes.suggest.sft_recipe.run`),
then the sweep it replaces with the sweep's own machinery (`sweep.runner`: every row checked first, then candidate x
seed `unfreeze sft` runs), each run timed. Both with report_to none; the sft runs save their final/ model (sft always
does; the cost model does not predict that write, so it shows in the cost model's error).

`--base FILE.yaml` takes any sft config instead of the one made from the flags (the pause table: a step-1 model and
pause data, `--candidates pause_table`).

Printed: the sweep's table (mean validation loss over seeds), the suggestion, and
  * regret: (mean validation loss of the pick's sweep runs - the best mean) / the best mean;
  * rank agreement: Spearman's rank correlation of suggest's order with the sweep's mean validation loss;
  * compute ratio: suggest's wall (and work) time / the sweep's;
  * the cost model's error: predicted / measured - 1 per candidate (mean over seeds) and for the whole sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suggest import drive_timed  # noqa: E402 - the classify benchmark's timed executor: one way to time runs

from unfreeze.config import parse_args  # noqa: E402
from unfreeze.files import read_json  # noqa: E402
from unfreeze.recipes.suggest import cost  # noqa: E402
from unfreeze.recipes.suggest.candidates import parse_sft_candidates  # noqa: E402
from unfreeze.recipes.suggest.config import SFT_DEFAULT_CANDIDATES, SFTSuggestConfig  # noqa: E402
from unfreeze.recipes.suggest.output import row_name  # noqa: E402
from unfreeze.recipes.suggest.sft_output import row_options  # noqa: E402
from unfreeze.recipes.suggest.sft_recipe import run as run_suggest  # noqa: E402
from unfreeze.recipes.suggest.signals import spearman  # noqa: E402
from unfreeze.sweep.executors import final_dir  # noqa: E402
from unfreeze.sweep.spec import load_sweep  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def base_config(args, folder: Path) -> Path:
    """The sft config every candidate shares: --base, or one made from the flags."""
    if args.base:
        return Path(args.base).resolve()
    from unfreeze.models.gguf import resolve_alias

    values = {"model": resolve_alias(args.model), "data": str(Path(args.data).resolve()), "pause_token": None,
              "train_limit": args.train_limit, "val_fraction": args.val_fraction, "max_length": args.max_length,
              "num_epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.batch_size,
              "lr": args.lr, "eval_every": 0, "report_to": "none", "precision": "fp32", "seed": 42}
    path = folder / "base.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def run_real_sweep(base: Path, names: list[str], seeds: list[int], folder: Path) -> dict:
    """`unfreeze sweep` over names x seeds with the base config's settings, every run timed."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_file = folder / "sweep.yaml"
    settings = {k: v for k, v in yaml.safe_load(base.read_text()).items() if k != "seed"}
    settings["report_to"] = "none"
    body = {"command": "sft", "seeds": seeds, "settings": settings,
            "rows": [{"name": row_name(n), "options": row_options(n)} for n in names]}
    sweep_file.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    sweep, out = load_sweep(sweep_file), folder / "out"

    (times, counts), wall, cpu = cost.timed(lambda: drive_timed(sweep, out))
    if counts["failed"]:
        raise SystemExit(f"the sweep had {counts['failed']} failed run(s): see {out}/failed.json")
    runs = []
    for name in names:
        for seed in seeds:
            metrics = read_json(final_dir(out, row_name(name), seed) / "metrics.json")
            run_wall, run_cpu = times[(row_name(name), seed)]
            runs.append({"name": name, "seed": seed, "wall_s": run_wall, "work_s": cost.work_seconds(run_wall, run_cpu),
                         "eval_loss": metrics["eval_loss"], "train_time_s": metrics["train_time_s"]})
    return {"runs": runs, "wall_s": wall, "work_s": cost.work_seconds(wall, cpu)}


def compare(result: dict, sweep: dict, names: list[str]) -> dict:
    """Regret, rank agreement, compute ratio and the cost model's errors (see the module docstring)."""
    def mean(name, key):
        return statistics.mean(r[key] for r in sweep["runs"] if r["name"] == name)

    loss = {n: mean(n, "eval_loss") for n in names}
    best = min(loss.values())
    rank = {row["name"]: row["rank"] for row in result["candidates"]}
    predicted = {row["name"]: row["predicted_time_s"] for row in result["candidates"]}
    per_run = {n: {"predicted_s": predicted[n], "measured_wall_s": round(mean(n, "wall_s"), 2),
                   "error": round(predicted[n] / mean(n, "wall_s") - 1, 4)} for n in names}
    return {
        "sweep_mean_eval_loss": {n: round(v, 5) for n, v in loss.items()},
        "sweep_best": min(loss, key=loss.get), "pick": result["pick"],
        "regret": round((loss[result["pick"]] - best) / best, 5),
        "spearman": round(spearman([rank[n] for n in names], [loss[n] for n in names]), 4),
        "compute_ratio_wall": round(result["bench_wall_s"] / sweep["wall_s"], 4),
        "compute_ratio_work": round(result["bench_work_s"] / sweep["work_s"], 4),
        "cost_model_per_candidate": per_run,
        "cost_model_mean_abs_error": round(statistics.mean(abs(v["error"]) for v in per_run.values()), 4),
        "cost_model_sweep_error": round(result["sweep_predicted_s"] / sweep["wall_s"] - 1, 4),
    }


def report(summary: dict, names: list[str]) -> None:
    c = summary["comparison"]
    print("\n| candidate | sweep mean val loss | suggest rank | predicted s/run | measured s/run | error |")
    print("|---|---|---|---|---|---|")
    ranks = {row["name"]: row["rank"] for row in summary["suggest"]["candidates"]}
    for n in sorted(names, key=lambda n: c["sweep_mean_eval_loss"][n]):
        p = c["cost_model_per_candidate"][n]
        print(f"| {n} | {c['sweep_mean_eval_loss'][n]:.4f} | {ranks[n]} | {p['predicted_s']:.1f} | "
              f"{p['measured_wall_s']:.1f} | {p['error']:+.0%} |")
    print(f"\npick {c['pick']} (sweep best {c['sweep_best']}): regret {c['regret']:.2%} (target <= 2%); "
          f"Spearman {c['spearman']:.2f}; compute ratio {c['compute_ratio_wall']:.3f} wall, "
          f"{c['compute_ratio_work']:.3f} work (target <= 0.2); cost model: mean |error| per candidate "
          f"{c['cost_model_mean_abs_error']:.0%}, whole sweep {c['cost_model_sweep_error']:+.0%} (target +-25%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default=str(SHARED / "gsm8k"))
    parser.add_argument("--base", default=None, help="an sft config to use instead of the flags")
    parser.add_argument("--train_limit", type=int, default=48)
    parser.add_argument("--val_fraction", type=float, default=0.25)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="0.2")
    parser.add_argument("--candidates", default=SFT_DEFAULT_CANDIDATES)
    parser.add_argument("--out", default="runs/bench_suggest_sft")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = Path(args.out).resolve()
    if folder.exists():
        raise SystemExit(f"--out {folder} exists; choose a new folder (the benchmark times fresh runs)")
    base = base_config(args, folder)
    names = parse_sft_candidates(args.candidates)
    cfg = parse_args(SFTSuggestConfig, [str(base), "--candidates", ",".join(names), "--seeds", str(args.seeds),
                                        "--budget", args.budget, "--out", str(folder / "suggest"),
                                        "report_to=none"], "unfreeze suggest", positional=("config",))
    result, wall, cpu = cost.timed(lambda: run_suggest(cfg))
    result["bench_wall_s"], result["bench_work_s"] = wall, cost.work_seconds(wall, cpu)
    seeds = [cfg.seed + i for i in range(args.seeds)]
    sweep = run_real_sweep(base, names, seeds, folder / "sweep")
    summary = {"args": vars(args), "suggest": result, "sweep": sweep, "comparison": compare(result, sweep, names)}
    report(summary, names)
    target = Path(args.json) if args.json else folder / "bench.json"
    target.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
