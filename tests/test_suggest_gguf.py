"""`unfreeze suggest` on the real pretrained SmolLM2-135M GGUF (Llama, 30 blocks, masked right padding):
the issue's done-when command on a small slice of the SMS data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.real_weights
def test_suggest_ranks_candidates_on_smollm2(smollm2_gguf, shared_data, tmp_path):
    rows = (shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    spam = [r for r in rows if r.startswith("spam\t")][:30]
    ham = [r for r in rows if r.startswith("ham\t")][:30]
    data = tmp_path / "SMSSpamCollection"
    data.write_text("\n".join(ham + spam) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    # One thread: two threads thrash on the shared 2-core CPU (see benchmarks/bench_suggest.py --threads).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "unfreeze", "suggest", "--model", str(smollm2_gguf), "--data", str(data),
                           "--candidates", "last_layer,last_block,last_blocks:2", "--num_epochs", "1", "--batch_size", "8",
                           "--context_length", "48", "--budget", "300s", "--seeds", "1", "--out", str(out),
                           "--feature_cache_dir", str(tmp_path / "features"), "--write_sweep", str(tmp_path / "top.yaml")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank  candidate" in done.stdout and "pick:" in done.stdout
    result = json.loads((out / "suggestion.json").read_text())
    by_name = {r["name"]: r for r in result["candidates"]}
    assert set(by_name) == {"last_layer", "last_block", "last_blocks:2"}
    assert by_name["last_layer"]["evidence"]["cache"] == "pooled"
    assert by_name["last_layer"]["trainable_params"] == 576 * 2  # transformers' score head: no bias
    assert by_name["last_block"]["start_stage"] == 30 and by_name["last_block"]["evidence"]["cache"] == "hidden"
    assert by_name["last_blocks:2"]["start_stage"] == 29
    assert len(result["signals"]["probe_val_acc_per_boundary"]) == 30 + 2  # embeddings, 30 blocks, final norm
    assert (tmp_path / "top.yaml").read_text().count("trainable_layers") == 3  # every candidate runs in classify
