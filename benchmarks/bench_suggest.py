"""`unfreeze suggest` against the exhaustive sweep it replaces, in one process run.

    python benchmarks/bench_suggest.py [--model gpt2-small-random|smollm2] [--n_train 64] [--epochs 2]
        [--context_length 32] [--seeds 3] [--budget 0.2] [--candidates ...] [--threads 1] [--json FILE]

For a fixed subset of the real SMS spam split (../shared/data): every candidate x seed runs as a full
`unfreeze classify` (the exhaustive sweep, timed end to end, model construction included), then
`unfreeze suggest` runs with a fresh feature cache (its cache build, signals, measurements and halving
all counted). Printed: the sweep's table, the suggestion, the regret (best mean test accuracy in the
sweep - mean test accuracy of the suggested candidate's sweep runs), the compute ratio (suggest's wall
time / the sweep's), the cost model's error per candidate (predicted / measured `train_time_s +
eval_time_s` - 1), and each signal's worth: Spearman's rank correlation with the sweep's mean validation
and test accuracy.

Every candidate is a classify preset (`last_blocks:N`, `blocks:A-B`, `bias`, `norms` included), so the
sweep runs them all. `--model smollm2` is the pretrained SmolLM2-135M GGUF (Llama, masked padding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unfreeze.config import config_from_mapping
from unfreeze.data import sms_spam
from unfreeze.errors import UsageError
from unfreeze.files import run_logger
from unfreeze.recipes.suggest.setup import prepare
from unfreeze.recipes.suggest.signals import spearman
from unfreeze.recipes.classify.recipe import run as run_config
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.suggest.recipe import suggest
from unfreeze.recipes.suggest.config import SuggestConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_SMALL = '{"n_layer": 12, "n_embd": 768, "n_head": 12}'


def write_subset(folder: Path, n_train: int, n_eval: int) -> None:
    """The first n_train / n_eval / n_eval examples of the reference split, as CSVs."""
    splits = sms_spam.load_splits(str(SHARED / "sms_spam" / "SMSSpamCollection"))
    folder.mkdir(parents=True, exist_ok=True)
    splits.train[:n_train].to_csv(folder / "train.csv", index=False)
    splits.validation[:n_eval].to_csv(folder / "validation.csv", index=False)
    splits.test[:n_eval].to_csv(folder / "test.csv", index=False)


def shared_options(args, data: Path) -> dict:
    options = {"data": str(data), "num_epochs": args.epochs, "context_length": args.context_length,
               "batch_size": args.batch_size, "lr": args.lr, "device": args.device}
    if args.model == "gpt2-small-random":
        options.update(weights="random", model_config=GPT2_SMALL, tokenizer=str(SHARED / "gpt2_bpe"))
    else:
        from unfreeze.models.gguf import installed_smollm2

        options.update(model=str(installed_smollm2()), weights="pretrained")
    return options


def run_sweep(args, options: dict, folder: Path) -> dict:
    """Every candidate x seed as a full classify run: {candidate: [metrics + wall_s per seed]}."""
    runs: dict[str, list[dict]] = {}
    for name in args.candidates.split(","):
        for i in range(args.seeds):
            cfg = config_from_mapping(ClassifyConfig, {**options, "trainable_layers": name, "seed": 123 + i,
                                                       "out": str(folder / f"{name}-{i}"),
                                                       "save_model": False})  # the sweep's training, not saving
            begin = time.perf_counter()
            metrics = run_config(cfg)
            metrics["wall_s"] = time.perf_counter() - begin
            runs.setdefault(name, []).append(metrics)
            print(f"sweep {name} seed {123 + i}: val {metrics['val_acc']:.3f} test {metrics['test_acc']:.3f} "
                  f"wall {metrics['wall_s']:.1f}s", flush=True)
    return runs


def sweep_table(runs: dict) -> list[dict]:
    rows = []
    for name, seeds in runs.items():
        mean = lambda key: statistics.mean(m[key] for m in seeds)  # noqa: E731
        rows.append({"candidate": name, "val_acc": round(mean("val_acc"), 4), "test_acc": round(mean("test_acc"), 4),
                     "test_sd": round(statistics.pstdev(m["test_acc"] for m in seeds), 4),
                     "run_s": round(statistics.mean(m["train_time_s"] + m["eval_time_s"] for m in seeds), 2),
                     "wall_s": round(mean("wall_s"), 2), "trainable_params": seeds[0]["trainable_params"]})
    return rows


def signal_worth(table: list[dict], rows: list[dict]) -> dict:
    by_name = {r["name"]: r for r in rows}
    names = [t["candidate"] for t in table]
    signals = {
        "probe_at_start": [by_name[n]["evidence"]["probe"] for n in names],
        "rgn_share": [by_name[n]["evidence"]["rgn_share"] for n in names],
        "first_round_val_acc": [by_name[n]["evidence"]["val_history"][0][1] for n in names],
        "suggest_rank (negated)": [-by_name[n]["rank"] for n in names],
    }
    worth = {}
    for signal, values in signals.items():
        worth[signal] = {target: round(spearman(values, [t[target] for t in table]), 3)
                         for target in ("val_acc", "test_acc")}
    return worth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small-random", choices=["gpt2-small-random", "smollm2"])
    parser.add_argument("--candidates", default="last_layer,last_block,last_two_blocks,all,lora")
    parser.add_argument("--n_train", type=int, default=48)
    parser.add_argument("--n_eval", type=int, default=48, help="validation and test examples (each)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--context_length", default="16")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="0.2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a contended CPU: two threads ran a GELU 50x slower here)")
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args()
    if not (SHARED / "sms_spam").is_dir():
        print(f"needs {SHARED}/sms_spam and gpt2_bpe", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_subset(data, args.n_train, args.n_eval)
        options = shared_options(args, data)
        begin = time.perf_counter()
        runs = run_sweep(args, options, Path(tmp) / "sweep")
        sweep_s = time.perf_counter() - begin
        table = sweep_table(runs)

        begin = time.perf_counter()
        cfg = config_from_mapping(SuggestConfig, {**options, "candidates": args.candidates, "budget": args.budget,
                                                  "seeds": args.seeds, "feature_cache_dir": str(Path(tmp) / "features")})
        setup = prepare(cfg, run_logger(None, "bench_suggest"))
        try:
            result = suggest(cfg, args.candidates.split(","), setup, begin, run_logger(None, "bench_suggest"))
        except UsageError as err:  # e.g. a budget that the fixed costs already use up: a result, not a crash
            print(json.dumps({"sweep": table, "suggest_error": str(err), "sweep_wall_s": round(sweep_s, 1),
                              "suggest_wall_s": round(time.perf_counter() - begin, 1)}, indent=2))
            return 1
        suggest_s = time.perf_counter() - begin

    from unfreeze.recipes.suggest.output import render_table

    print("\n## the exhaustive sweep (mean of", args.seeds, "seeds)")
    print("| candidate | val acc | test acc (sd) | run s | wall s | trainable |\n|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['candidate']} | {t['val_acc']:.3f} | {t['test_acc']:.3f} ({t['test_sd']:.3f}) | {t['run_s']} | "
              f"{t['wall_s']} | {t['trainable_params']:,} |")
    print("\n## the suggestion\n" + render_table(result["candidates"]))
    best = max(table, key=lambda t: t["test_acc"])
    picked = next(t for t in table if t["candidate"] == result["pick"])
    errors = {r["name"]: round(r["predicted_time_s"] / next(t["run_s"] for t in table if t["candidate"] == r["name"]) - 1, 3)
              for r in result["candidates"]}
    summary = {
        "pick": result["pick"], "best_in_sweep": best["candidate"],
        "regret_points": round(100 * (best["test_acc"] - picked["test_acc"]), 2),
        "sweep_wall_s": round(sweep_s, 1), "suggest_wall_s": round(suggest_s, 1),
        "compute_ratio": round(suggest_s / sweep_s, 3),
        "sweep_predicted_s": result["sweep_predicted_s"], "sweep_prediction_error": round(
            result["sweep_predicted_s"] / sweep_s - 1, 3),
        "cost_model_error": errors, "cost_model_mean_abs_error": round(statistics.mean(abs(e) for e in errors.values()), 3),
        "signal_worth_spearman": signal_worth(table, result["candidates"]),
        "settings": vars(args) | {"json": str(args.json)},
    }
    print("\n## summary\n" + json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "sweep": table, "suggestion": result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
