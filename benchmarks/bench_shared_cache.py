"""`unfreeze sweep` with the shared on-disk frozen-prefix cache against the same sweep without it.

    python benchmarks/bench_shared_cache.py [--rows 1,2,3,11] [--seeds 123,124,125] [--n_train 96]
        [--n_eval 48] [--epochs 1] [--context_length 64] [--layers 12] [--width 256] [--threads 1]

The issue's comparison (`unfreeze sweep experiments/spam_additional.yaml --rows 1,2,3,11 --seeds 3`) in a
reduced setting that fits a contended 2-core CPU: a GPT-2-shaped model with random weights saved once as a
local model folder (so every row and seed loads the same weights, as with pretrained GPT-2), the first
n_train / n_eval / n_eval examples of the reference SMS split, fewer epochs and a shorter context. The same
sweep runs twice in fresh output folders: `--feature_cache false` (every run builds its in-memory cache)
and `--feature_cache true` (runs share <out>/features). Printed: both wall times, the speed-up, how many
runs built a cache, and whether every run's metrics (accuracies, loss history) are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_suggest import write_subset  # the same SMS subset as the suggest benchmark (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def write_model(folder: Path, layers: int, width: int, heads: int) -> None:
    """A GPT-2-shaped model with fixed random weights, saved like a downloaded checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2Model(config).save_pretrained(folder)


def sweep(args, out: Path, shared: bool, options: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "unfreeze", "sweep", str(ROOT / "experiments" / "spam_additional.yaml"),
               "--rows", args.rows, "--seeds", args.seeds, "--out", str(out), "--feature_cache", str(shared).lower()]
    for option in options:
        command += ["--set", option]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stderr[-3000:]}")
    runs = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text()) for p in out.glob("runs/*/*/metrics.json")}
    return wall, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,3,11")
    parser.add_argument("--seeds", default="123,124,125")
    parser.add_argument("--n_train", type=int, default=96)
    parser.add_argument("--n_eval", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--context_length", default="64")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (SHARED / "sms_spam").is_dir():
        print(f"needs {SHARED}/sms_spam and gpt2_bpe", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data, model = Path(tmp) / "data", Path(tmp) / "model"
        write_subset(data, args.n_train, args.n_eval)
        write_model(model, args.layers, args.width, args.heads)
        options = [f"model={model}", f"tokenizer={SHARED / 'gpt2_bpe'}", f"data={data}", f"num_epochs={args.epochs}",
                   f"context_length={args.context_length}", "device=cpu"]
        without_s, without = sweep(args, Path(tmp) / "without", False, options)
        with_s, shared = sweep(args, Path(tmp) / "with", True, options)
        features = sum(1 for p in (Path(tmp) / "with" / "features").iterdir() if not p.name.startswith("."))
    same = without.keys() == shared.keys() and all(
        all(shared[k][m] == without[k][m] for m in ("train_acc", "val_acc", "test_acc", "history")) for k in without)
    built = sum(1 for m in shared.values() if m["cache"].get("shared", {}).get("built"))
    summary = {
        "setting": f"rows {args.rows} of spam_additional.yaml, seeds {args.seeds}; reduced: GPT-2-shaped random "
                   f"model ({args.layers} layers, width {args.width}) saved as a folder, {args.n_train}/{args.n_eval}/"
                   f"{args.n_eval} SMS examples, {args.epochs} epoch(s), context {args.context_length}, "
                   f"{args.threads} torch thread(s)",
        "runs": len(shared), "without_s": round(without_s, 1), "with_s": round(with_s, 1),
        "speedup": round(without_s / with_s, 2), "cache_builds_with": built, "cache_folders_with": features,
        "cache_builds_without": sum(1 for m in without.values() if m["cache"]["kind"] != "none"),
        "identical_metrics": same,
        "train_time_s_sum": {"without": round(sum(m["train_time_s"] for m in without.values()), 1),
                             "with": round(sum(m["train_time_s"] for m in shared.values()), 1)},
        # the frozen prefix's work: every run's own build without, the shared store's builds with (a pooled-vector
        # entry built from a stored boundary, or a boundary built from an earlier one, is a small part of a pass)
        "cache_build_s_sum": {"without": round(sum(m["cache_build_s"] for m in without.values()), 2),
                              "with": round(sum(m["cache_build_s"] for m in shared.values()), 2)},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
