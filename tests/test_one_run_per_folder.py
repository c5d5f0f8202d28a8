"""One run per output folder at a time, for every command that writes one (issue 22, item 1): two real
processes started into the same folder -- the second is refused with one line while the first runs, and the
first finishes its results untouched. A killed run's lock dies with it (tests/test_files.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_spam_rows
from pause_helpers import save_tiny_tokenizer, toy_rows, write_rows

TINY_GPT2 = '{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":128}'


def _spam(folder: Path) -> Path:
    rows = make_spam_rows(200)
    folder.mkdir(parents=True)
    lines = [f"{label}\t{text}\n" for label, text in rows]
    (folder / "SMSSpamCollection").write_text("".join(lines), encoding="utf-8")
    return folder / "SMSSpamCollection"


def classify(tmp: Path, out: Path) -> list[str]:
    return ["classify", "--weights", "random", "--model_config", TINY_GPT2, "--data", str(_spam(tmp / "spam")),
            "--tokenizer", str(save_tiny_tokenizer(tmp / "tok")), "--num_epochs", "40", "--report_to", "none",
            "--save_model", "false", "--out", str(out)]


def sft(tmp: Path, out: Path) -> list[str]:
    data = tmp / "pauses"
    write_rows(data / "train.json", toy_rows(40, seed=1))
    config = {"model": "gpt2", "weights": "random", "model_config": TINY_GPT2, "report_to": "none",
              "tokenizer": str(save_tiny_tokenizer(tmp / "tok")), "data": str(data), "pause_token": "<|pause|>",
              "unfreeze_pause_embedding": True, "unfreeze_pause_head": True, "batch_size": 2, "num_epochs": 30,
              "eval_every": 0, "max_length": 128}
    (tmp / "sft.yaml").write_text(yaml.safe_dump(config))
    return ["sft", str(tmp / "sft.yaml"), "--out", str(out)]


def inject_pauses(tmp: Path, out: Path) -> list[str]:
    gsm = tmp / "gsm8k"
    for split, n in (("train", 200), ("test", 4)):
        rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(n)]
        write_rows(gsm / f"{split}.jsonl", rows)
    return ["inject-pauses", "--dataset_location", str(gsm), "--augm_dataset_save_location", str(out),
            "--n_generated_samples_per_datapoint", "3000", "--n_random_pauses", "5", "--seed", "0"]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "unfreeze", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_lock(folder: Path, first: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not (folder / ".lock").exists():
        assert first.poll() is None, f"the first run ended before it held the folder: {first.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the first run never took the folder's lock"
        time.sleep(0.05)


@pytest.mark.parametrize("command, what, finished", [
    (classify, "classify", "metrics.json"), (sft, "sft", "metrics.json"),
    (inject_pauses, "inject-pauses", "train.json")])
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, command, what, finished):
    out = tmp_path / "out"
    argv = command(tmp_path, out)
    first = start(argv, tmp_path)
    try:
        wait_for_lock(out, first)
        second = subprocess.run([sys.executable, "-m", "unfreeze", *argv], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, first_err = first.communicate(timeout=900)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith(f"unfreeze {what}: error: another {what} run is writing into {out} (pid ")
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, first_err[-2000:]
    assert (out / finished).is_file() and not (out / ".lock").exists()
    if finished == "metrics.json":
        json.loads((out / finished).read_text())  # whole: the refused run wrote nothing into it
        log = (out / "run.log").read_text()
        assert "another" not in log  # and nothing into its log
