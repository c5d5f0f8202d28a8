"""The GPU check is ready before a GPU is: `benchmarks/gpu_check.py --smoke` runs every part's code path on
tiny models on the CPU and writes its record; a run cut by its budget still leaves one; and the test
suite's device switch (conftest: UNFREEZE_TEST_DEVICE, `tolerance`, `cpu_only`) does what the GPU run
relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CUDA_TOLERANCES, tolerance_for
from pause_helpers import toy_rows, write_rows

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("tests", "gpt2_table", "smollm2_table", "reference", "sft", "generation")


def gpu_check(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.fixture
def gsm8k_dir(tmp_path) -> Path:
    folder = tmp_path / "gsm8k"
    write_rows(folder / "train.jsonl", toy_rows(40, seed=3, pauses=False))
    write_rows(folder / "test.jsonl", toy_rows(8, seed=4, pauses=False))
    return folder


def test_smoke_runs_every_part_and_writes_json_and_markdown(tmp_path, spam_csv_dir, byte_tokenizer_dir, gsm8k_dir):
    out = tmp_path / "out"
    done = gpu_check("--smoke", "--out", out, "--work", tmp_path / "work", "--data", spam_csv_dir, "--tokenizer",
                     byte_tokenizer_dir, "--gsm8k", gsm8k_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["smoke"] and result["finished"] and list(result["parts"]) == list(PARTS)
    parts = result["parts"]
    has_reference = importlib.util.find_spec("llms_from_scratch") is not None
    for name, part in parts.items():
        expected = "done" if name != "reference" or has_reference else "skipped"
        assert part["status"] == expected, (name, part)
        assert 0 < part["seconds"] <= part["cap_s"] + 5

    tests = parts["tests"]
    assert tests["counts"] == {"PASSED": 3} and tests["failures"] == []
    assert "UNFREEZE_TEST_DEVICE=cpu" in tests["command"]
    row = parts["gpt2_table"]["rows"]["reference"]  # row 1 of spam_additional.yaml, once per precision
    assert row["fp32"]["runs"]["123"]["precision"] == "fp32" and row["bf16"]["runs"]["123"]["precision"] == "bf16-mixed"
    assert row["bf16_minus_fp32_test_acc"]["n"] == 1
    smollm2 = parts["smollm2_table"]
    assert Path(smollm2["model"]).name == "tiny_llama" and smollm2["rows"]["last_block"]["test_acc"]["n"] == 1
    if has_reference:
        (reference,) = parts["reference"]["rows"]
        assert reference["row"] == "last_layer" and reference["accuracy_ok"]
    (sft,) = parts["sft"]["rows"]
    assert sft["row"] == "sft" and sft["components"] == ["pause_embedding", "pause_head"]
    assert sft["steps_per_s"] > 0 and sft["peak_bytes"] is None  # CUDA's counter: none on the CPU
    assert 0 < sft["predicted_peak_bytes"] and sft["logits_bytes"] == 2 * sft["longest_example"] * 257 * 4
    generation = parts["generation"]
    assert generation["cached_equals_uncached"]
    assert set(generation["tokens_per_s"]) >= {"plain_cached", "plain_uncached"}

    summary = (out / "gpu_check.md").read_text()
    assert summary.startswith("# GPU check: CPU (--smoke)")
    for line in (r"\| tests \| done \| [\d.]+ \(\d+\) \|", r"## Classification table, random GPT-2-small weights",
                 r"\| reference \| \d+\.\d\d \(1\) \| \d+\.\d\d \(1\) \| [+-]\d+\.\d\d \(1\) \|",  # fp32, bf16, paired
                 r"\| last_block \| \d+\.\d\d \(1\) \|", r"\| sft \| pause_embedding, pause_head \| fp32 \| none \|",
                 r"\| plain_cached \| [\d.]+ \|", *([r"\| last_layer \| 1 \|"] if has_reference else [])):
        assert re.search(f"^{line}", summary, re.M), line
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # the device tool's 8 files


def test_a_run_cut_by_its_budget_still_leaves_a_record(tmp_path, spam_csv_dir, byte_tokenizer_dir):
    """Two sweeps (fp32, bf16) of several seconds each in a budget of 8: the part starts them and is stopped
    at its deadline, and the record says what finished. (--smollm2: no tiny model to make first.)"""
    out, work = tmp_path / "out", tmp_path / "work"
    done = gpu_check("--smoke", "--parts", "gpt2_table", "--budget_s", "8", "--out", out, "--work", work,
                     "--data", spam_csv_dir, "--tokenizer", byte_tokenizer_dir, "--smollm2", tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    part = json.loads((out / "gpu_check.json").read_text())["parts"]["gpt2_table"]
    assert "$ " in (work / "gpt2_table.log").read_text()  # a sweep was started ...
    assert part["status"] in ("timeout", "partial") and part["seconds"] <= part["cap_s"] + 1.5, part  # ... and stopped
    assert "bf16" not in {p for row in part["rows"].values() for p in row if row[p].get("runs")}
    assert f"| gpt2_table | {part['status']} |" in (out / "gpu_check.md").read_text()


# --- the test suite's device switch (tests/conftest.py) -------------------------------------------------


def test_tolerance_is_the_tests_own_on_the_cpu_and_the_stated_one_on_cuda():
    assert tolerance_for("cpu").exact and tolerance_for("cpu", 1e-5).atol == 1e-5
    cuda = tolerance_for("cuda")
    assert (cuda.rtol, cuda.atol) == CUDA_TOLERANCES["fp32"] and not cuda.exact
    assert tolerance_for("cuda", cpu=1e-3).atol == 1e-3  # never tighter than the CPU's
    assert tolerance_for("cuda", precision="bf16").rtol > tolerance_for("cuda", precision="tf32").rtol > cuda.rtol


def test_tolerance_compares_nested_metrics_and_counts_exactly():
    import torch

    metrics = {"eval_loss": 1.0, "history": [{"step": 3, "loss": 2.0}], "features": torch.ones(3)}
    near = {"eval_loss": 1.0 + 1e-9, "history": [{"step": 3, "loss": 2.0}], "features": torch.ones(3) + 1e-9}
    tolerance_for("cpu").assert_close(metrics, metrics)
    with pytest.raises(AssertionError, match="eval_loss"):
        tolerance_for("cpu").assert_close(near, metrics)  # bit for bit on the CPU
    tolerance_for("cuda").assert_close(near, metrics)
    with pytest.raises(AssertionError, match="step"):  # a count is never approximately right
        tolerance_for("cuda").assert_close({**metrics, "history": [{"step": 4, "loss": 2.0}]}, metrics)
    assert 1.0 + 1e-9 == tolerance_for("cuda").approx(1.0) and 1.0 + 1e-9 != tolerance_for("cpu").approx(1.0)


FAKE_CUDA = "import torch\ntorch.cuda.is_available = lambda: True\n"  # a plugin: pytest imports it before configuring
MARKED = """
import pytest

@pytest.mark.cpu_only(reason="measures the CPU")
def test_cpu():
    pass

def test_anywhere():
    pass
"""


def _pytest_in(folder: Path, test_text: str, *args, device: str | None = None) -> subprocess.CompletedProcess:
    """pytest on one test file beside a copy of tests/conftest.py, with UNFREEZE_TEST_DEVICE=device."""
    shutil.copy(ROOT / "tests" / "conftest.py", folder / "conftest.py")
    (folder / "test_marked.py").write_text(textwrap.dedent(test_text))
    (folder / "fake_cuda.py").write_text(FAKE_CUDA)
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    cpu_only(reason): only on the CPU\n")
    env = {key: value for key, value in os.environ.items() if key != "UNFREEZE_TEST_DEVICE"}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")])
    if device is not None:
        env["UNFREEZE_TEST_DEVICE"] = device
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cpu_only_runs_on_the_cpu_is_deselectable_and_skipped_elsewhere(tmp_path):
    assert "2 passed" in _pytest_in(tmp_path, MARKED).stdout
    assert "1 passed, 1 deselected" in _pytest_in(tmp_path, MARKED, "-m", "not cpu_only").stdout
    on_cuda = _pytest_in(tmp_path, MARKED, "-p", "fake_cuda", device="cuda").stdout
    assert "1 passed, 1 skipped" in on_cuda and "cpu_only: measures the CPU" in on_cuda


def test_the_switch_refuses_what_it_cannot_do(tmp_path):
    unexplained = _pytest_in(tmp_path, MARKED.replace('(reason="measures the CPU")', ""))
    assert unexplained.returncode != 0 and "needs reason=" in unexplained.stderr
    assert "is not one of cpu, cuda" in _pytest_in(tmp_path, MARKED, device="tpu").stderr
    assert "torch sees no CUDA device" in _pytest_in(tmp_path, MARKED, device="cuda").stderr
