"""`unfreeze sft` checkpoints: a run killed with SIGKILL continues from its latest checkpoint and ends
exactly where an uninterrupted run ends; a kill during a save never leaves a checkpoint that looks complete.

Every run goes where accelerate puts it: the test device (conftest hides the GPUs when that is the CPU).
On the CPU "exactly" is bit for bit; on CUDA within the `tolerance` fixture's (kernels such as attention's
backward need not be deterministic there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pause_helpers import toy_rows, write_rows
from test_sft import _tiny_config  # (pause_data is a conftest fixture)
from unfreeze.cli import main as cli_main
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config
from unfreeze.training.checkpoints import complete_checkpoints

# 36 training examples / 4 per batch = 9 optimizer steps per epoch, 3 epochs; dropout 0.1 (GPT-2's
# default) is on, so the random state must be restored too. Checkpoints at steps 5, 10, 15, 20, 25, 27.
RESUMABLE = {"num_epochs": 3, "save_steps": 5, "eval_every": 4, "log_every": 2, "eval_at_start": True}
TOTAL_STEPS = 27

# Runs `unfreeze sft` and SIGKILLs itself: at the N-th optimizer step (KILL_AT_STEP), or while the N-th
# checkpoint's optimizer state is being written (KILL_IN_SAVE). Nothing of the recipe is changed.
KILLER = """
import os, signal, sys
import torch
from unfreeze.cli import main

at_step, in_save = int(os.environ.get("KILL_AT_STEP", 0)), int(os.environ.get("KILL_IN_SAVE", 0))
counts = {"steps": 0, "saves": 0}
adamw_step, torch_save = torch.optim.AdamW.step, torch.save

def step(self, *args, **kwargs):
    counts["steps"] += 1
    if counts["steps"] == at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return adamw_step(self, *args, **kwargs)

def save(obj, f, *args, **kwargs):
    if str(f).endswith("optimizer.bin"):
        counts["saves"] += 1
        if counts["saves"] == in_save:
            os.kill(os.getpid(), signal.SIGKILL)
    return torch_save(obj, f, *args, **kwargs)

torch.optim.AdamW.step, torch.save = step, save
sys.exit(main(sys.argv[1:]))
"""

COMPARED = ("initial_eval_loss", "eval_loss", "eval_lm_loss", "eval_pause_loss", "train_history", "eval_history",
            "optimizer_steps")


def _killed_run(config_path, out, **kill) -> subprocess.CompletedProcess:
    # The environment (thread counts included) is this process's: the runs compare bit for bit.
    env = {**os.environ, **{key.upper(): str(value) for key, value in kill.items()}}
    return subprocess.run([sys.executable, "-c", KILLER, "sft", str(config_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The config of a resumable run, and the metrics of that run left alone (shared by the tests below)."""
    folder = tmp_path_factory.mktemp("resumable")
    write_rows(folder / "pauses" / "train.json", toy_rows(40, seed=1))
    path = _tiny_config(folder, folder / "pauses", **RESUMABLE)
    metrics = run_config(load_config(str(path), out=str(folder / "uninterrupted")))
    assert metrics["optimizer_steps"] == TOTAL_STEPS and metrics["resumed_from_step"] is None
    return path, metrics


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path, uninterrupted, capsys, tolerance):
    path, expected = uninterrupted
    out = tmp_path / "killed"
    result = _killed_run(path, out, kill_at_step=13)  # steps 1..12 done; checkpoints at 5 and 10
    assert result.returncode == -9, result.stderr[-2000:]
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step-00000005", "step-00000010"]
    assert not (out / "metrics.json").exists()

    # Another learning rate cannot continue this run: exit 2, naming the key; nothing is removed.
    assert cli_main(["sft", str(path), "lr=0.02", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lr=0.01" in err and "lr=0.02" in err and "Traceback" not in err
    assert len(complete_checkpoints(out / "checkpoints")) == 2

    # The same command again continues from step 10 and ends exactly like the uninterrupted run.
    assert cli_main(["sft", str(path), "--out", str(out)]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 10
    tolerance().assert_close({k: resumed[k] for k in COMPARED}, {k: expected[k] for k in COMPARED})
    assert "resumed from" in (out / "run.log").read_text()


def test_a_kill_during_a_save_leaves_no_checkpoint_that_looks_complete(tmp_path, uninterrupted, tolerance):
    path, expected = uninterrupted
    out = tmp_path / "killed"
    result = _killed_run(path, out, kill_in_save=3)  # while writing the step-15 checkpoint
    assert result.returncode == -9, result.stderr[-2000:]
    root = out / "checkpoints"
    assert [p.name for p in complete_checkpoints(root)] == ["step-00000005", "step-00000010"]
    assert (root / ".step-00000015.partial" / "model.safetensors").exists()  # the save was under way
    assert not (root / "step-00000015").exists()
    metrics = run_config(load_config(str(path), out=str(out)))
    assert metrics["resumed_from_step"] == 10
    tolerance().assert_close({k: metrics[k] for k in COMPARED}, {k: expected[k] for k in COMPARED})
    assert [p.name for p in complete_checkpoints(root)] == ["step-00000025", "step-00000027"]  # save_total_limit 2
    assert not list(root.glob(".*"))  # the abandoned staging folder is gone


def test_resume_true_needs_a_checkpoint_and_resume_false_starts_afresh(tmp_path, pause_data, capsys,  # noqa: F811
                                                                       tolerance):
    path = _tiny_config(tmp_path, pause_data, save_steps=4, train_limit=20)
    out = tmp_path / "run"
    assert cli_main(["sft", str(path), "resume=true", "--out", str(out)]) == 2
    assert "resume: true" in capsys.readouterr().err
    first = run_config(load_config(str(path), out=str(out)))
    assert first["resumed_from_step"] is None and complete_checkpoints(out / "checkpoints")
    (out / "metrics.json").unlink()  # as if it had been killed after its last checkpoint
    again = run_config(load_config(str(path), ["resume=false"], out=str(out)))
    assert again["resumed_from_step"] is None
    tolerance().assert_close(again["eval_loss"], first["eval_loss"], "eval_loss")
    assert "removed the checkpoints of an earlier run" in (out / "run.log").read_text()
