"""`unfreeze classify --feature_cache_dir` and `unfreeze sweep`'s shared cache: a second run reads the frozen
prefix from disk (no forward pass of a frozen block), a run of another model, data or context length never
reuses a cache, and the metrics are the same with the shared cache as with the in-memory one."""

from __future__ import annotations

import json
import logging

import pytest
from torch import nn

from unfreeze.config import config_from_mapping
from unfreeze.recipes.classify.recipe import run as run_config
from unfreeze.recipes.classify.config import ClassifyConfig

TINY = '{"n_layer":3,"n_embd":32,"n_head":2,"n_positions":128}'
LOG = logging.getLogger("test_shared_cache")


def config(spam_csv_dir, tokenizer_dir, tmp_path, name="run", device="cpu", **changes) -> ClassifyConfig:
    values = dict(weights="random", model_config=TINY, data=str(spam_csv_dir), tokenizer=str(tokenizer_dir),
                  num_epochs=2, batch_size=4, lr=1e-3, device=str(device), eval_freq=3, eval_iter=2,
                  trainable_layers="last_block", out=str(tmp_path / name))
    values.update(changes)
    return config_from_mapping(ClassifyConfig, values)


class FrozenBlockCalls:
    """Counts forward calls of transformer blocks none of whose parameters train (the frozen prefix)."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        def hook(module, _args, _output):
            params = list(module.parameters())
            if type(module).__name__.endswith("Block") and params and not any(p.requires_grad for p in params):
                self.calls += 1

        self.handle = nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *_):
        self.handle.remove()


def cache_folders(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_a_second_run_reads_the_frozen_prefix_from_disk(spam_csv_dir, byte_tokenizer_dir, tmp_path, device,
                                                        tolerance):
    features = str(tmp_path / "features")
    with FrozenBlockCalls() as first:
        one = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "one", device, feature_cache_dir=features))
    assert first.calls > 0 and one["cache"]["shared"]["built"] and one["device"] == str(device)
    with FrozenBlockCalls() as second:  # another seed of the same pretrained... here: the same random weights
        two = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "two", device, feature_cache_dir=features))
    assert second.calls == 0 and not two["cache"]["shared"]["built"] and two["cache_build_s"] == 0
    tolerance().assert_close({k: two[k] for k in ("test_acc", "history")}, {k: one[k] for k in ("test_acc", "history")})
    # last_layer freezes every block: the same network and data, so the same folder; its pooled features are
    # added, computed from the stored input of the last block (the same batches: the pooling reads every position)
    with FrozenBlockCalls() as third:
        head = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "head", device, feature_cache_dir=features,
                                 trainable_layers="last_layer"))
    assert head["cache"]["kind"] == "pooled" and head["cache"]["shared"]["built"]
    assert third.calls == 0  # no block ran in full: the last one at the pooled position only
    (folder,) = cache_folders(tmp_path / "features")
    (pooled,) = (tmp_path / "features" / folder).glob("pooled-*/entry.json")
    assert json.loads(pooled.read_text())["start"] == 3  # boundary 3: the input of block 2 of 3
    with FrozenBlockCalls() as fourth:
        again = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "again", device,
                                  feature_cache_dir=features, trainable_layers="last_layer"))
    assert fourth.calls == 0 and not again["cache"]["shared"]["built"]


@pytest.mark.parametrize("preset", ["last_block", "last_layer"])
def test_metrics_equal_the_in_memory_cache(spam_csv_dir, byte_tokenizer_dir, tmp_path, preset, device, tolerance):
    shared = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "shared", device, trainable_layers=preset,
                               feature_cache_dir=str(tmp_path / "features")))
    memory = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "memory", device, trainable_layers=preset))
    assert shared["cache"]["shared"] and "shared" not in memory["cache"]
    tol = tolerance()
    for key in ("train_acc", "val_acc", "test_acc", "history"):
        tol.assert_close(shared[key], memory[key], key)
    tol.assert_close(json.loads((tmp_path / "shared" / "metrics.json").read_text())["test_acc"], memory["test_acc"])


@pytest.mark.parametrize("change", [{"seed": 124}, {"context_length": "20"}, {"data": "other"},
                                    {"model_config": '{"n_layer":3,"n_embd":32,"n_head":4,"n_positions":128}'}])
def test_another_model_data_or_context_length_never_reuses_a_cache(spam_csv_dir, byte_tokenizer_dir, tmp_path, change,
                                                                   device):
    features = str(tmp_path / "features")
    run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "one", device, feature_cache_dir=features,
                      num_epochs=1))
    if change.get("data") == "other":  # one message changed
        import pandas as pd

        other = tmp_path / "other"
        other.mkdir()
        for split in ("train", "validation", "test"):
            frame = pd.read_csv(spam_csv_dir / f"{split}.csv")
            if split == "test":
                frame.loc[0, "Text"] = frame.loc[0, "Text"] + " x"
            frame.to_csv(other / f"{split}.csv", index=False)
        change = {"data": str(other)}
    with FrozenBlockCalls() as calls:
        again = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, "two", device,
                                  feature_cache_dir=features, num_epochs=1, **change))
    assert calls.calls > 0 and again["cache"]["shared"]["built"]
    assert len(cache_folders(tmp_path / "features")) == 2


def test_sweep_shares_one_cache_across_rows_and_seeds(spam_csv_dir, byte_tokenizer_dir, tmp_path, device, tolerance):
    import subprocess
    import sys

    sweep = tmp_path / "sweep.yaml"
    settings = dict(weights="random", model_config=TINY, data=str(spam_csv_dir), tokenizer=str(byte_tokenizer_dir),
                    num_epochs=1, batch_size=4, device=str(device))
    import yaml

    sweep.write_text(yaml.safe_dump({"command": "classify", "seeds": [123, 124], "settings": settings, "rows": [
        {"name": "block", "options": {"trainable_layers": "last_block"}},
        {"name": "block_slow", "options": {"trainable_layers": "last_block", "lr": 1e-4}}]}))
    runs = {}
    for mode in ("true", "false"):
        out = tmp_path / f"out-{mode}"
        done = subprocess.run([sys.executable, "-m", "unfreeze", "sweep", str(sweep), "--out", str(out),
                               "--feature_cache", mode], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[mode] = {p.parent.parent.name + p.parent.name: json.loads(p.read_text())
                      for p in out.glob("runs/*/*/metrics.json")}
    assert len(runs["true"]) == 4 and runs["true"].keys() == runs["false"].keys()
    # random weights differ per seed: one cache per seed, shared by both rows (they freeze the same prefix)
    assert len(cache_folders(tmp_path / "out-true" / "features")) == 2
    assert not (tmp_path / "out-false" / "features").exists()
    for key, metrics in runs["true"].items():
        tolerance().assert_close({k: metrics[k] for k in ("test_acc", "history")},
                                 {k: runs["false"][key][k] for k in ("test_acc", "history")}, key)
    built = sorted(m["cache"]["shared"]["built"] for m in runs["true"].values())
    assert built == [False, False, True, True]
