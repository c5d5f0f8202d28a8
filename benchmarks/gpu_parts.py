"""The parts of `gpu_check.py`: each runs its commands as subprocesses until its deadline and returns what
finished (see gpu_check.py). A part's dict always has `status`: done (everything it set out to do),
partial (the deadline cut it; what finished is there), timeout (cut before anything finished), failed
(something broke: `error`, or test failures), skipped (an input is missing: `reason`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# The equivalence tests: cached = uncached, staged = the model's own forward, KV-cache = no cache,
# resume = uninterrupted.
TEST_FILES = ("tests/test_cache.py", "tests/test_cache_build.py", "tests/test_shared_cache.py",
              "tests/test_classifier.py", "tests/test_generation.py", "tests/test_sft_cache.py",
              "tests/test_sft_resume.py")
SMOKE_TESTS = ("tests/test_cache.py", "-k", "test_budget_policy or test_not_exact or test_default_budget")
TINY_GPT2 = '{"n_layer":2,"n_embd":32,"n_head":2}'
KEPT_METRICS = ("train_acc", "val_acc", "test_acc", "train_time_s", "eval_time_s", "examples_per_s", "precision",
                "device", "trainable_params", "max_length")


@dataclass
class Context:
    """What every part gets: the command line, folders, the children's environment, and `save` (which
    records the part's result so far in gpu_check.json and the Markdown summary)."""

    args: Any
    work: Path
    env: dict
    device: str
    save: Callable[[dict], None]
    models: dict = field(default_factory=dict)  # "smollm2": a model folder, "arch": config + tokenizer


def run_logged(command: list[str], log: Path, deadline: float, env: dict) -> int | None:
    """Run `command` (output appended to `log`) until `deadline`; None if it was stopped there (with
    every process it started)."""
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def finished(status_so_far: str, stopped: bool, anything: bool) -> str:
    if stopped:
        return "partial" if anything else "timeout"
    return status_so_far


# --- tests --------------------------------------------------------------------------------------------
def parse_pytest(text: str) -> dict:
    """Outcome counts and failures from `pytest -v -rfE` output (also from a run cut short)."""
    outcomes = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text, re.M)
    failures = [{"test": test, "message": (message or "")[:300]}
                for _, test, message in re.findall(r"^(FAILED|ERROR) (tests/\S+)(?: - (.*))?$", text, re.M)]
    return {"counts": dict(Counter(outcome for _, outcome in outcomes)), "failures": failures}


def tests(ctx: Context, deadline: float) -> dict:
    log = ctx.work / "tests.log"
    # --smoke: three quick tests of one file (collecting all seven files costs more than the rest of the part)
    selection = SMOKE_TESTS if ctx.args.smoke else TEST_FILES
    command = [sys.executable, "-m", "pytest", "-m", "not cpu_only", *selection, "-v", "-rfE", "-p", "no:cacheprovider"]
    code = run_logged(command, log, deadline, {**ctx.env, "UNFREEZE_TEST_DEVICE": ctx.device})
    result = {"command": f"UNFREEZE_TEST_DEVICE={ctx.device} pytest -m 'not cpu_only' {' '.join(selection)}",
              **parse_pytest(log.read_text(errors="replace")), "exit_code": code}
    ran = sum(result["counts"].values())
    result["status"] = finished("done" if code == 0 else "failed", code is None, ran > 0)
    if code not in (0, None) and not result["failures"]:
        result["log_tail"] = tail(log)
    return result


# --- the classification tables (sweeps) -----------------------------------------------------------------
def sweep_metrics(out: Path) -> dict[str, dict[str, dict]]:
    """row -> seed -> the kept metrics of every finished run of a sweep folder."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(out.glob("runs/*/seed-*/metrics.json")):
        metrics = json.loads(path.read_text())
        found.setdefault(path.parent.parent.name, {})[path.parent.name.removeprefix("seed-")] = {
            **{key: metrics.get(key) for key in KEPT_METRICS}, "cache": (metrics.get("cache") or {}).get("kind")}
    return found


def sweep_failures(out: Path) -> dict:
    """(row, seed) -> the first 300 characters of its error, from the sweep's failed.json."""
    path = out / "failed.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    return {key: str(value.get("error") if isinstance(value, dict) else value)[:300] for key, value in found.items()}


def mean_sd(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def run_sweeps(ctx: Context, deadline: float, name: str, invocations: list[list[str]],
               summarize: Callable[[], dict]) -> dict:
    """Run the sweep commands in order until the deadline, saving the table after each."""
    log = ctx.work / f"{name}.log"
    status = "done"
    for index, command in enumerate(invocations):
        if time.time() >= deadline:
            status = finished(status, True, index > 0)
            break
        code = run_logged(command, log, deadline, ctx.env)
        if code is None:
            status = finished(status, True, bool(summarize()["rows"]))
            break
        if code != 0:
            status = "failed"
        ctx.save({"status": "running", **summarize()})
    result = {"status": status, **summarize()}
    if status == "failed":
        result["log_tail"] = tail(log)
    return result


def sweep_command(ctx: Context, file: str, rows: str | None, seed: int, out: Path, sets: list[str]) -> list[str]:
    command = [sys.executable, "-m", "unfreeze", "sweep", str(ROOT / "experiments" / file), "--seeds", str(seed),
               "--out", str(out), "--set", f"data={ctx.args.data}", "--set", f"device={ctx.device}"]
    for setting in sets + (["num_epochs=1"] if ctx.args.smoke else []):
        command += ["--set", setting]
    return command + (["--rows", rows] if rows else [])


def gpt2_table(ctx: Context, deadline: float) -> dict:
    """Rows of experiments/spam_additional.yaml with random GPT-2-small weights, fp32 and bf16 (autocast),
    seed by seed (so that a cut run still holds pairs)."""
    sets = ["weights=random", f"tokenizer={ctx.args.tokenizer}"]
    sets += [f"model_config={TINY_GPT2}"] if ctx.args.smoke else []
    outs = {precision: ctx.work / "gpt2_table" / precision for precision in ("fp32", "bf16")}
    spelled = {"fp32": "fp32", "bf16": "bf16-mixed"}  # classify's precision for each column of the table
    invocations = [sweep_command(ctx, "spam_additional.yaml", ctx.args.gpt2_rows, seed, out,
                                 [*sets, f"precision={spelled[precision]}"])
                   for seed in ctx.args.seeds for precision, out in outs.items()]

    def summarize() -> dict:
        found = {precision: sweep_metrics(out) for precision, out in outs.items()}
        rows = {}
        for row in sorted(set(found["fp32"]) | set(found["bf16"])):
            runs = {precision: found[precision].get(row, {}) for precision in outs}
            paired = sorted(set(runs["fp32"]) & set(runs["bf16"]))
            rows[row] = {**{precision: {"test_acc": mean_sd([m["test_acc"] for m in runs[precision].values()]),
                                        "train_time_s": mean_sd([m["train_time_s"] for m in runs[precision].values()]),
                                        "runs": runs[precision]} for precision in outs},
                         "bf16_minus_fp32_test_acc": mean_sd([runs["bf16"][s]["test_acc"] - runs["fp32"][s]["test_acc"]
                                                              for s in paired])}
        return {"rows": rows, "failures": {p: sweep_failures(out) for p, out in outs.items()}}

    return run_sweeps(ctx, deadline, "gpt2_table", invocations, summarize)


def smollm2_model(ctx: Context, deadline: float) -> str | None:
    """A model folder for the SmolLM2 table: --smollm2 as a folder, or its GGUF dequantised once."""
    source = ctx.models.get("smollm2") or ctx.args.smollm2
    if not source or not str(source).endswith(".gguf"):
        return source
    folder = ctx.work / "smollm2_model"
    code = run_logged([sys.executable, str(BENCHMARKS / "gpu_worker.py"), "gguf-to-folder", str(source), str(folder)],
                      ctx.work / "smollm2_table.log", deadline, ctx.env)
    if code != 0:
        raise RuntimeError(f"dequantising {source} failed ({code}): {tail(ctx.work / 'smollm2_table.log', 600)}")
    ctx.models["smollm2"] = str(folder)
    return str(folder)


def smollm2_table(ctx: Context, deadline: float) -> dict:
    """experiments/spam_smollm2.yaml with the pretrained SmolLM2-135M-Instruct, seed by seed."""
    model = smollm2_model(ctx, deadline)
    if model is None:
        return {"status": "skipped", "reason": "no SmolLM2 model: pass --smollm2 FILE.gguf or a model folder"}
    out = ctx.work / "smollm2_table"
    sets = [f"model={model}"] + ([f"num_epochs={ctx.args.smollm2_epochs}"] if ctx.args.smollm2_epochs else [])
    invocations = [sweep_command(ctx, "spam_smollm2.yaml", ctx.args.smollm2_rows, seed, out, sets)
                   for seed in ctx.args.seeds]

    def summarize() -> dict:
        found = sweep_metrics(out)
        rows = {row: {key: mean_sd([m[key] for m in runs.values()]) for key in ("train_acc", "val_acc", "test_acc",
                                                                             "train_time_s")} | {"runs": runs}
                for row, runs in found.items()}
        return {"model": model, "rows": rows, "failures": sweep_failures(out)}

    return run_sweeps(ctx, deadline, "smollm2_table", invocations, summarize)


# --- P1: against the reference's own code ---------------------------------------------------------------
def reference(ctx: Context, deadline: float) -> dict:
    import importlib.util

    if importlib.util.find_spec("llms_from_scratch") is None:
        return {"status": "skipped", "reason": "needs the reference's code: pip install --no-deps llms-from-scratch"}
    results = ctx.work / "reference"
    command = [sys.executable, str(BENCHMARKS / "bench_vs_reference.py"), "--rows", *ctx.args.reference_rows,
               "--epochs", str(ctx.args.reference_epochs), "--device", ctx.device, "--results", str(results),
               "--data", str(ctx.args.data), "--tokenizer", str(ctx.args.tokenizer)]
    if ctx.args.smoke:
        command += ["--subset", "32", "--arch", TINY_GPT2]
    code = run_logged(command, ctx.work / "reference.log", deadline, ctx.env)
    found = json.loads((results / "results.json").read_text()) if (results / "results.json").exists() else {}
    rows = found.get("rows", [])
    result = {"setting": found.get("setting"), "rows": rows, "exit_code": code,
              "status": finished("done" if code == 0 else "failed", code is None, bool(rows))}
    if code not in (0, None):
        result["log_tail"] = tail(ctx.work / "reference.log")
    return result


# --- sft steps/s and peak memory; decoding ---------------------------------------------------------------
def sft_model(ctx: Context, deadline: float) -> str | None:
    """A folder with SmolLM2's config and tokenizer: --smollm2_arch, the table's model folder, or made from
    the GGUF's metadata (no weights: the rows start from random weights)."""
    model = ctx.args.smollm2_arch or ctx.models.get("arch") or ctx.models.get("smollm2")
    source = ctx.args.smollm2
    if model is None and source and not str(source).endswith(".gguf"):
        model = source
    elif model is None and source:
        folder = ctx.work / "smollm2_arch"
        code = run_logged([sys.executable, str(BENCHMARKS / "gpu_worker.py"), "architecture", str(source), str(folder)],
                          ctx.work / "sft.log", deadline, ctx.env)
        model = str(folder) if code == 0 else None
    return model


def sft(ctx: Context, deadline: float) -> dict:
    model = sft_model(ctx, deadline)
    if model is None:
        return {"status": "skipped", "reason": "no SmolLM2 architecture: pass --smollm2_arch FOLDER or --smollm2"}
    jsonl = ctx.work / "sft.jsonl"
    command = [sys.executable, str(BENCHMARKS / "gpu_worker.py"), "sft-rows", "--model", str(model), "--gsm8k",
               str(ctx.args.gsm8k), "--work", str(ctx.work / "sft"), "--jsonl", str(jsonl), "--steps",
               str(ctx.args.sft_steps), "--deadline", str(deadline - 15)]
    if ctx.args.sft_rows:
        command += ["--rows", ctx.args.sft_rows]
    if ctx.args.smoke:
        command += ["--precision", "fp32", "--batch_size", "2", "--max_length", "128"]
    code = run_logged(command, ctx.work / "sft.log", deadline, ctx.env)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    broken = code != 0 or any("error" in row for row in rows)
    result = {"model": str(model), "steps": ctx.args.sft_steps, "rows": rows, "exit_code": code,
              "status": finished("failed" if broken else "done", code is None, bool(rows))}
    if code not in (0, None):
        result["log_tail"] = tail(ctx.work / "sft.log")
    return result


def generation(ctx: Context, deadline: float) -> dict:
    out = ctx.work / "generation.json"
    command = [sys.executable, str(BENCHMARKS / "bench_generation.py"), "--device", ctx.device, "--json", str(out)]
    if ctx.args.smoke:
        command += ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--new_tokens", "8", "--repeats", "1",
                    "--min_prompt", "4", "--max_prompt", "8"]
    code = run_logged(command, ctx.work / "generation.log", deadline, ctx.env)
    result = {"status": finished("done" if code == 0 and out.exists() else "failed", code is None, False),
              "exit_code": code, **(json.loads(out.read_text()) if out.exists() else {})}
    if result["status"] == "failed":
        result["log_tail"] = tail(ctx.work / "generation.log")
    return result


PARTS = {"tests": tests, "gpt2_table": gpt2_table, "smollm2_table": smollm2_table, "reference": reference,
         "sft": sft, "generation": generation}
