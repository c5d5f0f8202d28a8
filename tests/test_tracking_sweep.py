"""Acceptance test of issue 27 for the wiring of `unfreeze.tracking` into the recipes: a tiny classify sweep
with the local default tracker logs every run under its row/seed name, read back through trackio's own
command line; a tracker that is not installed stops the sweep with exit 2 before any run.

It runs once `unfreeze sweep` has `--report_to` (skipped until the recipes are wired).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from unfreeze.cli import main
from unfreeze.sweep.config import SweepConfig

from test_report_html import ROOT, SHARED, _tiny_spam_folder
from test_tracking import _trackio_cli

pytestmark = pytest.mark.skipif("report_to" not in {f.name for f in dataclasses.fields(SweepConfig)},
                                reason="unfreeze sweep has no --report_to yet (tracking not wired into the recipes)")


def _sweep(tmp_path: Path, *extra: str) -> list[str]:
    tokenizer = SHARED / "data" / "gpt2_bpe"
    if not (tokenizer / "encoder.json").is_file():
        pytest.skip("../shared/data/gpt2_bpe not present (offline tokenizer)")
    data = tmp_path / "data"
    if not data.exists():
        _tiny_spam_folder(data)
    return ["sweep", str(ROOT / "experiments" / "spam_additional.yaml"), "--rows", "reference,last_layer",
            "--seeds", "1,2", "--out", str(tmp_path / "sw"), "--set", "weights=random", "--set", f"data={data}",
            "--set", f"tokenizer={tokenizer}", "--set", 'model_config={"n_layer":1,"n_embd":32,"n_head":2}',
            "--set", "num_epochs=1", "--set", "batch_size=4", "--set", "eval_freq=2", "--set", "device=cpu", *extra]


def test_every_run_of_a_sweep_is_tracked_under_its_row_and_seed(tmp_path, capsys):
    pytest.importorskip("trackio")
    assert main(_sweep(tmp_path, "--report_to", "trackio")) == 0
    store = tmp_path / "sw" / "trackio"
    names = sorted(_trackio_cli(store, "list", "runs", "--project", "unfreeze")["runs"])
    assert names == [f"sw/{row}/seed-{seed}" for row in ("last_layer", "reference") for seed in (1, 2)]
    for name in names:
        row, seed = name.split("/")[1], name.split("-")[-1]
        metrics = json.loads((tmp_path / "sw" / "runs" / row / f"seed-{seed}" / "metrics.json").read_text())
        run = _trackio_cli(store, "get", "run", "--project", "unfreeze", "--run", name)
        assert run["config"]["_Group"] == "sw" and run["config"]["trainable_layers"] == metrics["config"]["trainable_layers"]
        losses = _trackio_cli(store, "get", "metric", "--project", "unfreeze", "--run", name, "--metric", "train_loss")
        assert [v["value"] for v in losses["values"]] == pytest.approx(metrics["history"]["train_loss"])
        final = _trackio_cli(store, "get", "metric", "--project", "unfreeze", "--run", name, "--metric", "test_acc")
        assert final["values"][-1]["value"] == pytest.approx(metrics["test_acc"])
        assert metrics["tracker_run"]["run"] == name
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sw")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("| Tracker run |")


def test_an_uninstalled_tracker_stops_the_sweep_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(_sweep(tmp_path, "--report_to", "wandb")) == 2
    err = capsys.readouterr().err
    assert 'pip install "unfreeze[wandb]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sw" / "runs").exists()
