"""Where a whole `unfreeze classify --trainable_layers all` run spends its time (issue 16, item 4).

    PYTHONPATH=src python benchmarks/profile_all.py [--n_train 64] [--epochs 1] [--batch_size 8]

Runs `classify` in this process (GPT-2-small shape, random weights, fp32, CPU, the first `n_train`
training examples of the reference's split and a quarter as many validation and test examples) under
`torch.profiler`, and prints:

* the wall time of each phase of the run: setup (data, model), training steps (forward, backward,
  AdamW), the periodic loss estimates (`eval_freq`/`eval_iter`), the per-epoch accuracies and the final
  evaluation of every split;
* the operators' own time by kind (matrix products, attention, AdamW, the rest) and the time no
  operator accounts for (Python, batch assembly, logging);
* the matrix products' achieved GFLOP/s (the profiler's FLOP count) against the matmul peak measured in
  the same process, and the whole run's useful matmul FLOP/s against it.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from unfreeze.config import config_from_mapping
from unfreeze.recipes.classify import recipe as classify
from unfreeze.training.loop import ClassifierTraining
from unfreeze.recipes.classify.config import ClassifyConfig

from bench_suggest import write_subset  # benchmarks/ is the script folder
from common import matmul_peak_gflops

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARCH = {"n_layer": 12, "n_embd": 768, "n_head": 12}
PHASES = {"mean_loss": "periodic loss estimates", "accuracy": "per-epoch accuracies",
          "evaluate": "final evaluation", "train": "training (all of it)"}
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
LABELS = ("unfreeze.", "Optimizer.", "ProfilerStep")  # labels, not operators: their time is their children's


def timed(name: str, seconds: dict, function):
    """`function`, labelled for the profiler and its wall time added to seconds[name]."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        with record_function(f"unfreeze.{name}"):
            result = function(*args, **kwargs)
        seconds[name] += time.perf_counter() - begin
        return result
    return wrapper


def op_kind(name: str) -> str:
    if name in MATMUL:
        return "matrix products"
    if "attention" in name:
        return "attention (SDPA)"
    if "adam" in name.lower():
        return "AdamW"
    return "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_train", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    seconds: dict[str, float] = defaultdict(float)
    # The loop's phases are its methods; the final evaluation is called through the recipe's module.
    for owner, attribute, name in ((ClassifierTraining, "_periodic_losses", "mean_loss"),
                                   (ClassifierTraining, "_epoch_accuracies", "accuracy"),
                                   (ClassifierTraining, "advance", "train"), (classify, "evaluate", "evaluate")):
        setattr(owner, attribute, timed(name, seconds, getattr(owner, attribute)))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_subset(data, args.n_train, max(8, args.n_train // 4))
        cfg = config_from_mapping(ClassifyConfig, {
            "weights": "random", "model_config": json.dumps(ARCH), "data": str(data),
            "tokenizer": str(SHARED / "gpt2_bpe"), "trainable_layers": "all", "num_epochs": args.epochs,
            "batch_size": args.batch_size, "precision": "fp32", "device": "cpu", "out": str(Path(tmp) / "run"),
            "save_model": False})
        begin = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            metrics = classify.run(cfg)
        wall = time.perf_counter() - begin
    peak = matmul_peak_gflops(torch.float32)
    report(wall, seconds, prof.key_averages(), peak, metrics)


def report(wall: float, seconds: dict, events, peak: float, metrics: dict) -> None:
    steps = seconds["train"] - seconds["mean_loss"] - seconds["accuracy"]
    rows = [("setup (data, model) and writing results", wall - seconds["train"] - seconds["evaluate"]),
            ("training steps (forward, backward, AdamW)", steps),
            ("periodic loss estimates", seconds["mean_loss"]), ("per-epoch accuracies", seconds["accuracy"]),
            ("final evaluation", seconds["evaluate"])]
    print(f"whole run {wall:.1f} s, {metrics['n_train']} training examples, max length {metrics['max_length']}")
    print("| phase | s | share |\n|---|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} | {value / wall:.0%} |")
    by_kind, flops = defaultdict(float), 0.0
    for event in events:
        if event.key.startswith(LABELS):
            continue  # labels, not operators: their time is their children's
        by_kind[op_kind(event.key)] += event.self_cpu_time_total / 1e6
        if event.key in MATMUL:
            flops += event.flops
    print("| operators by kind | s | share of the run |\n|---|---|---|")
    for kind, value in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {value:.1f} | {value / wall:.0%} |")
    others = sorted((e for e in events if op_kind(e.key) == "other operators" and not e.key.startswith(LABELS)),
                    key=lambda e: -e.self_cpu_time_total)[:8]
    for event in others:
        print(f"|   {event.key} ({event.count} calls) | {event.self_cpu_time_total / 1e6:.1f} | "
              f"{event.self_cpu_time_total / 1e6 / wall:.0%} |")
    unaccounted = wall - sum(by_kind.values())
    print(f"| no operator (Python, batch assembly, logging) | {unaccounted:.1f} | {unaccounted / wall:.0%} |")
    matmul_s = by_kind["matrix products"]
    print(f"matrix products: {flops / 1e9:.0f} GFLOP in {matmul_s:.1f} s = {flops / 1e9 / matmul_s:.1f} GFLOP/s "
          f"({flops / 1e9 / matmul_s / peak:.0%} of the {peak:.1f} GFLOP/s peak measured now); "
          f"over the whole run {flops / 1e9 / wall:.1f} GFLOP/s ({flops / 1e9 / wall / peak:.0%} of peak)")


if __name__ == "__main__":
    main()
