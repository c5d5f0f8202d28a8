"""The README's main command, as a new user runs it: the quick start with nothing but the install (the SmolLM2
GGUF from PyPI, the SMS Spam Collection shipped with unfreeze), no network, then its report. It learns, and it
ends with the table, the page and the picture."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("unfreeze sweep experiments/quickstart.yaml --out runs/quickstart",
            "unfreeze report runs/quickstart --html runs/quickstart/report.html --plot runs/quickstart/test_acc.png")


def test_the_readme_shows_the_main_command_this_test_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(command in readme for command in COMMANDS)


@pytest.mark.real_weights
def test_the_main_command_runs_with_nothing_but_the_install_and_learns(smollm2_gguf, tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text((ROOT / "experiments" / "quickstart.yaml").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    outputs = []
    for command in COMMANDS:
        argv = [sys.executable, "-m", "unfreeze", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done)
    runs = tmp_path / "runs" / "quickstart" / "runs"
    metrics = {row: json.loads((runs / row / "seed-123" / "metrics.json").read_text())
               for row in ("last_block", "last_layer", "first_token")}
    assert metrics["last_block"]["n_train"] == 200 and metrics["last_block"]["n_test"] == 100
    assert metrics["last_block"]["test_acc"] >= 0.75  # it learns (measured 0.87)
    assert metrics["first_token"]["test_acc"] < metrics["last_block"]["test_acc"]  # the first token sees nothing
    assert "sweep: 3/3 runs" in outputs[0].stderr
    table = outputs[1].stdout
    assert all(f"| {row} |" in table for row in metrics)
    for name in ("report.html", "test_acc.png"):
        assert (tmp_path / "runs" / "quickstart" / name).stat().st_size > 1000
    assert (tmp_path / "runs" / "quickstart" / "trackio").is_dir()
