"""Side by side, in one process: uncached vs cached `unfreeze classify`, per trainable preset.

    python benchmarks/bench_classify_cache.py [--n_train 64] [--epochs 5] [--presets ...] [--precisions fp32 bf16]

A GPT-2-small-shaped random model (12 layers, width 768) trains on a fixed subset of the real SMS spam
split (../shared/data). Each preset runs twice with the same seed — `--cache_activations off` and
`on` — and the table shows the end-to-end time of the work that differs (cache build, training with its
periodic evaluations, and the final accuracy passes: `uncached_s`, `cached_s`, `speedup`), the speed-up
of the whole command including model construction (`wall_speedup`), training examples/s, and
whether the metrics agree.
`--reduced_only` times one training step per preset with the last block computed at the pooled
position only against the full block (`reduced vs full` lines).
It also measures the machine's matrix-multiply peak (fp32 and bf16, 2048x2048) and the achieved
training FLOP/s of the uncached `all` run (6 x non-embedding parameters x tokens, the usual estimate
from Kaplan et al. 2020, plus the attention term 6 x layers x length x width per token, forward+backward).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from unfreeze.config import config_from_mapping
from unfreeze.data import sms_spam
from unfreeze.recipes.classify.recipe import run as run_config
from unfreeze.recipes.classify.config import ClassifyConfig

from common import matmul_peak_gflops  # benchmarks/common.py (the script folder is on sys.path)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARCH = {"n_layer": 12, "n_embd": 768, "n_head": 12}


def write_subset(folder: Path, n_train: int) -> None:
    """The first n_train / n_train/4 / n_train/4 examples of the reference split, as CSVs."""
    splits = sms_spam.load_splits(str(SHARED / "sms_spam" / "SMSSpamCollection"))
    folder.mkdir(parents=True, exist_ok=True)
    splits.train[:n_train].to_csv(folder / "train.csv", index=False)
    splits.validation[: max(8, n_train // 4)].to_csv(folder / "validation.csv", index=False)
    splits.test[: max(8, n_train // 4)].to_csv(folder / "test.csv", index=False)


def run_once(data: Path, out: Path, preset: str, cache: str, epochs: int, precision: str) -> tuple[float, dict]:
    cfg = config_from_mapping(ClassifyConfig, {
        "weights": "random", "model_config": json.dumps(ARCH), "data": str(data),
        "tokenizer": str(SHARED / "gpt2_bpe"), "trainable_layers": preset, "num_epochs": epochs,
        "cache_activations": cache, "out": str(out), "precision": precision, "device": "cpu",
        "save_model": False,  # timed: the training and evaluation, not writing final/
    })
    begin = time.perf_counter()
    metrics = run_config(cfg)
    return time.perf_counter() - begin, metrics


def training_flops(metrics: dict) -> float:
    d, layers, length = ARCH["n_embd"], ARCH["n_layer"], metrics["max_length"]
    non_embedding = layers * 12 * d * d
    per_token = 6 * non_embedding + 6 * layers * length * d
    return per_token * length * metrics["history"]["examples_seen"]


def reduced_vs_full(presets: list[str], repeats: int = 5) -> list[dict]:
    """Per preset, one training step of what runs after the cache (forward + backward, batch 8 x 120),
    with the last block at the pooled position only (`reduce_last_block`) and in full: median seconds."""
    from transformers import GPT2Config, GPT2Model

    from unfreeze.cache.memory import frozen_prefix_stages
    from unfreeze.models import trainable
    from unfreeze.models.classifier import DecoderClassifier

    torch.manual_seed(0)
    config = GPT2Config(**ARCH, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    ids, labels = torch.randint(0, 50000, (8, 120)), torch.randint(0, 2, (8,))
    rows = []
    for preset in presets:
        model = DecoderClassifier(GPT2Model(config))
        trainable.apply_preset(model, preset, 16, 16, seed=0)
        model.train()
        start = max(frozen_prefix_stages(model.stage_modules()), 1)  # the cache's boundary (1: uncached)
        with torch.no_grad():
            hidden = model.run_stages(model.embed(ids), 1, start) if start > 1 else None
        seconds = {}
        for reduce in (True, False):
            model.reduce_last_block = reduce
            times = []
            for _ in range(repeats):
                begin = time.perf_counter()
                stored = hidden if hidden is not None else model.embed(ids)
                logits = model.head(model.pooled_features(stored, start, ids))
                torch.nn.functional.cross_entropy(logits, labels).backward()
                times.append(time.perf_counter() - begin)
            seconds[reduce] = sorted(times)[repeats // 2]
        rows.append({"preset": preset, "start_stage": start, "reduced_s": round(seconds[True], 4),
                     "full_s": round(seconds[False], 4), "speedup": round(seconds[False] / seconds[True], 2)})
        print(f"reduced vs full, {preset}: {seconds[True]:.3f} s vs {seconds[False]:.3f} s per step "
              f"({rows[-1]['speedup']}x)", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_train", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["last_layer", "last_block", "last_two_blocks", "all"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="run every preset in each of these precisions (bf16: autocast and a bf16 cache)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--reduced_only", action="store_true",
                        help="only the side-by-side step timing of the reduced last block vs the full one")
    args = parser.parse_args()
    if args.reduced_only:
        reduced_vs_full(args.presets)
        return 0
    if not (SHARED / "sms_spam").is_dir():
        print(f"needs {SHARED}/sms_spam and gpt2_bpe", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak 2048^2: "
          f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_subset(data, args.n_train)
        # One discarded run first, so that no measured run pays the process's one-time warm-up.
        run_once(data, Path(tmp) / "warm-up", "last_layer", "on", 1, "fp32")
        for precision in args.precisions:
            for preset in args.presets:
                result = {}
                for cache in ("off", "on") if preset != "all" else ("off", "auto"):
                    wall, metrics = run_once(data, Path(tmp) / f"{preset}-{cache}-{precision}", preset, cache,
                                             args.epochs, precision)
                    result[cache] = (wall, metrics)
                (w_off, m_off), (w_on, m_on) = result["off"], list(result.values())[1]
                # The measure: training (with its periodic evaluations and, when cached, the cache
                # build) plus the final accuracy passes; model construction and tokenising are the same
                # work in both paths and are excluded (the wall columns include them).
                e2e_off = m_off["train_time_s"] + m_off["eval_time_s"]
                e2e_on = m_on["train_time_s"] + m_on["eval_time_s"]
                agree = all(m_off[k] == m_on[k] for k in ("train_acc", "val_acc", "test_acc")) and all(
                    abs(a - b) <= 1e-5 for a, b in zip(m_off["history"]["train_loss"], m_on["history"]["train_loss"]))
                row = {"preset": preset, "precision": precision, "uncached_s": round(e2e_off, 1),
                       "cached_s": round(e2e_on, 1), "speedup": round(e2e_off / e2e_on, 2),
                       "wall_uncached_s": round(w_off, 1), "wall_cached_s": round(w_on, 1),
                       "wall_speedup": round(w_off / w_on, 2),
                       "uncached_ex_s": m_off["examples_per_s"], "cached_ex_s": m_on["examples_per_s"],
                       "cache": m_on["cache"]["kind"], "metrics_agree": agree,
                       "test_acc_uncached": m_off["test_acc"], "test_acc_cached": m_on["test_acc"]}
                if preset == "all":
                    achieved = training_flops(m_off) / m_off["train_loop_s"] / 1e9
                    row["train_gflops"] = round(achieved, 1)
                    row["fraction_of_peak"] = round(achieved / peaks[precision], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    header = ("preset", "precision", "uncached_s", "cached_s", "speedup", "wall_speedup", "uncached_ex_s",
              "cached_ex_s", "cache", "metrics_agree", "test_acc_uncached", "test_acc_cached")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    for row in rows:
        if "train_gflops" in row:
            print(f"uncached 'all' ({row['precision']}): {row['train_gflops']} GFLOP/s training = "
                  f"{row['fraction_of_peak']:.0%} of the {row['precision']} matmul peak")
    if args.json:
        args.json.write_text(json.dumps({"peaks_gflops": peaks, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
