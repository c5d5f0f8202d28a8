"""`unfreeze.tracking`: runs logged under their row/seed names and read back through each tracker's own API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unfreeze.errors import UsageError
from unfreeze.tracking import NEEDS, check_tracker, names_for, open_tracker

STEPS = {0: {"train_loss": 0.9, "val_loss": 1.0}, 50: {"train_loss": 0.5, "val_loss": 0.7},
         100: {"train_loss": 0.2, "val_loss": 0.4, "train_acc": 0.95}}
FINAL = {"test_acc": 0.93, "train_time_s": 12.5, "device": "cpu", "history": [1, 2]}  # text and lists are left out


def _log_a_run(report_to: str, name: str, group: str | None, folder: Path):
    with open_tracker(report_to, name, folder, config={"lr": 5e-5, "trainable_layers": "last_block"},
                      group=group, links={"run folder": folder / "runs" / "a"}) as tracker:
        for step, metrics in STEPS.items():
            tracker.log(metrics, step=step)
        tracker.log_final(FINAL)
        tracker.link("model", folder / "runs" / "a" / "final")
    return tracker


def _trackio_cli(store: Path, *args: str) -> dict:
    """The trackio command line in a fresh process, pointed at the store only by TRACKIO_DIR."""
    command = shutil.which("trackio", path=os.path.dirname(sys.executable)) or shutil.which("trackio")
    done = subprocess.run([command, *args, "--json"], env={**os.environ, "TRACKIO_DIR": str(store)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_names_are_sweep_row_seed_grouped_by_sweep(tmp_path):
    assert names_for(tmp_path / "x", tmp_path / "sw", "last_block", 2) == ("sw/last_block/seed-2", "sw")
    assert names_for(tmp_path / "runs" / "row1") == ("row1", None)


def test_local_default_logs_steps_and_final_metrics_read_back_through_trackio(tmp_path):
    pytest.importorskip("trackio")
    sweep = tmp_path / "sw"
    name, group = names_for(None, sweep, "last_block", 1)
    tracker = _log_a_run("trackio", name, group, sweep)
    store = sweep / "trackio"
    assert tracker.reference()["location"] == str(store / "unfreeze.db")
    assert _trackio_cli(store, "list", "runs", "--project", "unfreeze")["runs"] == ["sw/last_block/seed-1"]
    run = _trackio_cli(store, "get", "run", "--project", "unfreeze", "--run", name)
    assert run["config"]["lr"] == 5e-5 and run["config"]["_Group"] == "sw"
    assert run["config"]["links"]["run folder"] == str(sweep / "runs" / "a")
    assert {"train_loss", "val_loss", "test_acc", "train_time_s"} <= set(run["metrics"])
    assert "device" not in run["metrics"] and "history" not in run["metrics"]
    loss = _trackio_cli(store, "get", "metric", "--project", "unfreeze", "--run", name, "--metric", "train_loss")
    assert [(v["step"], v["value"]) for v in loss["values"]] == [(0, 0.9), (50, 0.5), (100, 0.2)]
    final = _trackio_cli(store, "get", "metric", "--project", "unfreeze", "--run", name, "--metric", "test_acc")
    assert [(v["step"], v["value"]) for v in final["values"]] == [(100, 0.93)]


def test_trackio_runs_of_two_sweeps_in_one_process_land_in_their_own_folders(tmp_path):
    trackio = pytest.importorskip("trackio")
    for sweep in ("one", "two"):
        for seed in (1, 2):
            name, group = names_for(None, tmp_path / sweep, "row", seed)
            _log_a_run("trackio", name, group, tmp_path / sweep)
    for sweep in ("one", "two"):
        runs = _trackio_cli(tmp_path / sweep / "trackio", "list", "runs", "--project", "unfreeze")["runs"]
        assert sorted(runs) == [f"{sweep}/row/seed-1", f"{sweep}/row/seed-2"]
    # trackio's own Python API reads the last store it was pointed at
    assert sorted(run.name for run in trackio.Api().runs("unfreeze")) == ["two/row/seed-1", "two/row/seed-2"]


@pytest.mark.parametrize("report_to", sorted(NEEDS))
def test_an_uninstalled_tracker_is_one_line_naming_the_extra(report_to, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, NEEDS[report_to][0][0], None)  # `import x` now raises ImportError
    with pytest.raises(UsageError) as caught:
        check_tracker(report_to)
    message = str(caught.value)
    assert "\n" not in message and "not installed" in message
    assert f'pip install "unfreeze[{NEEDS[report_to][1]}]"' in message
    with pytest.raises(UsageError):
        open_tracker(report_to, "x", None)  # opening checks first


def test_a_tracker_that_cannot_import_names_the_error_and_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def broken(name, *args):
        if name == "trackio":
            raise ImportError("libsqlite3.so.0: cannot open shared object file")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(UsageError, match=r"trackio cannot be imported \(ImportError: libsqlite3.*unfreeze\[trackio\]"):
        check_tracker("trackio")


def test_unknown_tracker_and_none(tmp_path):
    with pytest.raises(UsageError, match="choose one of none, trackio, wandb, mlflow, tensorboard"):
        check_tracker("neptune")
    tracker = _log_a_run("none", "x", None, tmp_path)
    assert tracker.reference() is None and list(tmp_path.iterdir()) == []


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    name, group = names_for(None, tmp_path / "sw", "lora", 3)
    tracker = _log_a_run("wandb", name, group, tmp_path / "sw")
    folder = Path(tracker.reference()["location"])
    assert folder.parent == tmp_path / "sw" / "wandb" and folder.name.startswith("offline-run-")
    assert list(folder.glob("run-*.wandb")) and (folder / "files").is_dir()
    assert tracker.reference()["view"] == f"wandb sync {folder}" and tracker.reference()["url"] is None


def test_wandb_online_without_a_key_is_refused_before_work(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UsageError, match="not logged in to W&B .* WANDB_MODE=offline"):
        check_tracker("wandb")


def test_mlflow_local_store_read_back_through_its_client(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = _log_a_run("mlflow", "sw/all/seed-1", "sw", tmp_path / "sw")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'sw' / 'mlflow.db'}")
    run = client.get_run(tracker.reference()["id"])
    assert run.info.run_name == "sw/all/seed-1" and run.data.tags["group"] == "sw"
    assert run.info.status == "FINISHED" and run.data.params["trainable_layers"] == "last_block"
    assert run.data.tags["link.model"] == str(tmp_path / "sw" / "runs" / "a" / "final")
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (50, 0.7), (100, 0.4)]
    assert run.data.metrics["test_acc"] == 0.93


def test_tensorboard_events_read_back_through_its_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = _log_a_run("tensorboard", "sw/all/seed-1", "sw", tmp_path / "sw")
    events = EventAccumulator(tracker.reference()["location"])
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train_loss")] == [(0, 0.9), (50, 0.5), (100, 0.2)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("test_acc")] == [(100, 0.93)]


def test_a_failed_run_is_finished_as_failed(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError):
        with open_tracker("mlflow", "boom", tmp_path) as tracker:
            tracker.log({"train_loss": 1.0}, step=0)
            raise RuntimeError("diverged")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(tracker.reference()["id"]).info.status == "FAILED"
