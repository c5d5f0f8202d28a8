"""`unfreeze sft` under `accelerate launch` with 2 CPU processes (gloo): the final metrics of 1 process with
the same global batch, and a killed 2-process run that resumes from its checkpoint.

"The same global batch" in sft's loop: every optimizer step follows the mean of the per-micro-batch mean
losses -- over one process's micro-batches when accumulating (accelerate divides each loss by
gradient_accumulation_steps), over the processes' micro-batches under DDP (its all-reduce averages). So one
process with batch_size 2 and gradient_accumulation_steps 2 computes the same steps as two processes with
batch_size 2 each: accelerate's sharded loader gives process k the batches k, k + 2, ... of the one shuffled
order, which the single process accumulates in pairs. (batch_size 4 on one process is another function: its
loss divides by the labelled tokens of all four examples at once.) Dropout is off, because each process
draws its own masks.

Tolerance: relative 1e-6. (g0 + g1) / 2 all-reduced and g0 / 2 + g1 / 2 accumulated round differently, by
~1e-7 of a gradient per step in fp32, which moves the losses far less; on the project's machine the two
runs agreed bit for bit. It must stay well below what another batching changes: batch_size 4 on one
process ends 1.2e-5 (relative) away in eval_loss here. A resumed run repeats the same processes'
arithmetic and must equal the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from pause_helpers import toy_rows, write_rows
from test_sft import _tiny_config
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config
from unfreeze.training.checkpoints import complete_checkpoints

pytestmark = pytest.mark.cpu_only(reason="two ranks talk over gloo on the CPU; one GPU cannot hold two NCCL ranks")

# 40 rows -> 36 training examples: 18 micro-batches of 2 per epoch = 9 optimizer steps, 2 epochs.
# Checkpoints every 4 steps (the two newest kept); validation every 4 steps and at the end (5 in all).
SETTINGS = {"dropout": 0.0, "batch_size": 2, "num_epochs": 2, "eval_every": 4, "log_every": 2,
            "eval_at_start": True, "save_steps": 4}
TOTAL_STEPS = 18
COMPARED = ("initial_eval_loss", "eval_loss", "eval_lm_loss", "eval_pause_loss", "eval_history", "optimizer_steps",
            "n_train", "n_val", "trainable_params")
RELATIVE = 1e-6

# Runs `unfreeze sft` in each process; rank 0 SIGKILLs itself at its KILL_AT_STEP-th optimizer step (the
# launcher then stops the other rank). Nothing of the recipe is changed.
KILLER = """
import os, signal, sys
import torch
from unfreeze.cli import main

at_step, count = int(os.environ["KILL_AT_STEP"]), [0]
adamw_step = torch.optim.AdamW.step

def step(self, *args, **kwargs):
    count[0] += 1
    if count[0] == at_step and os.environ.get("RANK") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return adamw_step(self, *args, **kwargs)

torch.optim.AdamW.step = step
sys.exit(main(sys.argv[1:]))
"""


def approx(value):
    """pytest.approx at RELATIVE, also for the histories (lists of flat dicts)."""
    if isinstance(value, list):
        return [pytest.approx(item, rel=RELATIVE) for item in value]
    return pytest.approx(value, rel=RELATIVE)


def _free_port() -> int:
    """A port for the launcher's rendezvous: other test runs on the machine may hold the default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(program: list[str], cwd, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` with 2 CPU processes (torchrun-style --multi_gpu with ACCELERATE_USE_CPU: gloo)."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true",
           **{key.upper(): str(value) for key, value in env.items()}}
    return subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(_free_port()), *program], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (in this process) with accumulation 2, and two launched processes without: their metrics,
    and the 2-process config (for the resume test)."""
    folder = tmp_path_factory.mktemp("multiprocess")
    data = folder / "pauses"
    write_rows(data / "train.json", toy_rows(40, seed=1))
    one = _tiny_config(folder, data, gradient_accumulation_steps=2, **SETTINGS)
    two = _tiny_config(folder, data, gradient_accumulation_steps=1, **SETTINGS)
    single = run_config(load_config(str(one), out=str(folder / "one")))
    done = launch_two(["-m", "unfreeze", "sft", str(two), "--out", str(folder / "two")], cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    launched = json.loads((folder / "two" / "metrics.json").read_text())
    return {"folder": folder, "config": two, "single": single, "launched": launched}


def test_two_processes_give_the_metrics_of_one_with_the_same_global_batch(runs):
    single, launched = runs["single"], runs["launched"]
    assert (single["num_processes"], launched["num_processes"]) == (1, 2)
    assert single["optimizer_steps"] == TOTAL_STEPS
    assert len(launched["eval_history"]) == 5 and launched["eval_pause_loss"] < launched["initial_eval_pause_loss"]
    for key in COMPARED:
        assert launched[key] == approx(single[key]), key


def test_two_processes_log_the_training_loss_of_the_global_batch(runs):
    single, launched = runs["single"], runs["launched"]
    assert [r["step"] for r in launched["train_history"]] == [r["step"] for r in single["train_history"]]
    assert launched["train_history"] == approx(single["train_history"])


def test_a_killed_two_process_run_resumes_to_the_same_metrics(runs):
    folder, config = runs["folder"], runs["config"]
    killer = folder / "killer.py"
    killer.write_text(KILLER)
    out = folder / "killed"
    killed = launch_two([str(killer), "sft", str(config), "--out", str(out)], cwd=folder, kill_at_step=14)
    assert killed.returncode != 0  # steps 1..13 done: checkpoints at 8 and 12 kept, no metrics
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step-00000008", "step-00000012"]
    assert not (out / "metrics.json").exists()

    again = launch_two(["-m", "unfreeze", "sft", str(config), "--out", str(out)], cwd=folder)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 12 and resumed["num_processes"] == 2
    expected = runs["launched"]
    for key in (*COMPARED, "train_history"):
        assert resumed[key] == expected[key], key
