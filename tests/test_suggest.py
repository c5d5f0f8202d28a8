"""`unfreeze suggest` end to end on a tiny model: a candidate trained to its end is classify's run, the
command's outputs (table, suggestion.json, PNG, a sweep file that `unfreeze sweep` reads), the cache
reused by a second run, and bad input as one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from unfreeze.cache import disk
from unfreeze.config import config_from_mapping
from unfreeze.models import trainable
from unfreeze.suggest import candidates as cand
from unfreeze.suggest import output
from unfreeze.suggest.arms import Arm, CachedForward
from unfreeze.suggest.setup import prepare
from unfreeze.sweep.spec import load_sweep
from unfreeze.tasks.classify import run_config
from unfreeze.tasks.classify_config import ClassifyConfig
from unfreeze.tasks.suggest import make_arms
from unfreeze.tasks.suggest_config import SuggestConfig

TINY = '{"n_layer":3,"n_embd":32,"n_head":2,"n_positions":128}'
LOG = logging.getLogger("test_suggest")


def options(spam_csv_dir, tokenizer_dir, tmp_path, **changes) -> dict:
    values = dict(weights="random", model_config=TINY, data=str(spam_csv_dir), tokenizer=str(tokenizer_dir),
                  num_epochs=2, batch_size=4, lr=1e-3, device="cpu", cache_dir=str(tmp_path / "features"))
    values.update(changes)
    return values


@pytest.mark.parametrize("name", ["last_layer", "last_block", "all", "lora"])
def test_a_candidate_trained_to_its_end_is_the_classify_run(spam_csv_dir, byte_tokenizer_dir, tmp_path, name):
    cfg = config_from_mapping(SuggestConfig, options(spam_csv_dir, byte_tokenizer_dir, tmp_path))
    setup = prepare(cfg, LOG)
    for p in setup.base_model.parameters():
        p.requires_grad_(False)  # as suggest leaves the shared model before it copies it for each candidate
    arm = make_arms(cfg, [name], setup)[0]
    model, start = arm.model, arm.start
    cache, _ = disk.get_or_build(setup.base_model, setup.tokens, tmp_path / "features",
                                 [start] if 2 <= start <= model.final_stage else [], "fp32", setup.device)
    arm.forward = CachedForward(model, setup.tokens, cache, start, setup.device, None)
    assert arm.forward.kind == {"last_layer": "pooled", "last_block": "hidden"}.get(name, "none")
    torch.manual_seed(999)  # the arm keeps its own random state: the caller's must not matter
    arm.advance(3)
    arm.evaluate()  # an evaluation between rounds changes nothing
    arm.advance(10**6)
    assert arm.done and arm.steps_done == 2 * (48 // 4)
    val_acc, _ = arm.evaluate()
    classify = run_config(config_from_mapping(ClassifyConfig, {
        **{k: v for k, v in options(spam_csv_dir, byte_tokenizer_dir, tmp_path).items() if k != "cache_dir"},
        "trainable_layers": name, "out": str(tmp_path / "classify")}))
    assert val_acc == classify["val_acc"]
    assert arm.evaluate("test")[0] == classify["test_acc"]
    assert arm.summary.trainable_params == classify["trainable_params"]


@pytest.mark.parametrize("name", ["last_block", "lora"])
def test_interleaved_arms_end_with_classify_trains_weights_bit_for_bit(spam_csv_dir, byte_tokenizer_dir, tmp_path, name):
    """Stronger than equal accuracies: the weights after classify's own training loop (with frequent
    periodic evaluations, whose loader passes move the data order) equal the arm's, interleaved with another."""
    import dataclasses

    from unfreeze.data import sms_spam
    from unfreeze.tasks import classify

    cfg = config_from_mapping(SuggestConfig, options(spam_csv_dir, byte_tokenizer_dir, tmp_path))
    setup = prepare(cfg, LOG)
    run_cfg = dataclasses.replace(setup.classify, eval_freq=5, eval_iter=2)
    arms = []
    for candidate in (name, "last_layer"):
        model = setup.build(cfg.seed)
        summary = cand.apply(model, candidate, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        forward = CachedForward(model, setup.tokens, None, 0, setup.device, None)
        arms.append(Arm(candidate, model, summary, forward, setup.labels, run_cfg, setup.device))
    for steps in (1, 4, 100):  # rounds, interleaved
        for arm in arms:
            arm.advance(steps)
    reference = setup.build(cfg.seed)
    cand.apply(reference, name, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    loaders = classify.make_loaders(sms_spam.load_splits(cfg.data), cfg.batch_size)
    classify.train(run_cfg, reference, classify.Forward(reference, setup.tokens, None, setup.device, None),
                   loaders, setup.device, LOG)
    for (key, mine), (_, theirs) in zip(arms[0].model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(mine, theirs), key


def test_candidates_are_classify_presets_and_train_what_they_name():
    from transformers import GPT2Config, GPT2Model

    from unfreeze.models.classifier import GPT2Classifier

    config = GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2Classifier(GPT2Model(config))
    cand.apply(model, "last_blocks:2", 8, 8, 0)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if n.startswith(("body.h.1.", "body.h.2.", "body.ln_f", "head"))}
    assert cand.start_stage(model) == 2
    cand.apply(model, "bias", 8, 8, 0)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in trained and "body.h.0.attn.c_attn.bias" in trained and "body.ln_f.bias" in trained
    assert all(n.endswith("bias") or n == "head.weight" for n in trained)
    assert cand.start_stage(model) == 0  # block 0's biases train: nothing but the embeddings is frozen
    for name in ("blocks:0-1", "norms", "last_blocks:3"):  # every classify preset resolves, as classify's
        mine = {id(p) for p in cand.selection(model, name, 8, 8, 0).params}
        assert mine == {id(p) for p in trainable.preset_selection(model, name, 8, 8, seed=0).params}
    assert cand.parse_candidates("blocks:0-1, norms,bias") == ["blocks:0-1", "norms", "bias"]


def cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "unfreeze", "suggest", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def flags(spam_csv_dir, tokenizer_dir, tmp_path, **changes) -> list[str]:
    values = options(spam_csv_dir, tokenizer_dir, tmp_path, **changes)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def test_the_command_ranks_writes_and_its_sweep_file_is_accepted(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    out, sweep_file = tmp_path / "out", tmp_path / "top.yaml"
    done = cli(*flags(spam_csv_dir, byte_tokenizer_dir, tmp_path, candidates="last_layer,last_block,last_blocks:2,all,bias",
                      budget="300s", out=out, write_sweep=sweep_file, top=2))
    assert done.returncode == 0, done.stderr
    assert "rank  candidate" in done.stdout and "pick:" in done.stdout
    result = json.loads((out / "suggestion.json").read_text())
    rows = result["candidates"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and result["pick"] == rows[0]["name"]
    for row in rows:
        low, high = row["interval"]
        assert low <= row["predicted_val_acc"] <= high and row["predicted_time_s"] > 0
        assert row["predicted_peak_bytes"] > 0 and row["evidence"]["steps"] >= 1
    by_name = {r["name"]: r for r in rows}
    assert by_name["last_layer"]["trainable_params"] == 32 * 2 + 2
    assert by_name["last_layer"]["evidence"]["cache"] == "pooled" and by_name["all"]["evidence"]["cache"] == "none"
    assert len(result["signals"]["probe_val_acc_per_boundary"]) == 3 + 2
    assert result["spent_s"] > 0 and result["cache"]["built"]
    assert (out / "suggestion.png").read_bytes()[:4] == b"\x89PNG"
    sweep = load_sweep(sweep_file)
    # every candidate is a classify preset now: the top two, whatever they are (last_blocks:2 included)
    assert [row.name for row in sweep.rows] == [output.row_name(r["name"]) for r in rows[:2]]
    assert [row.config["trainable_layers"] for row in sweep.rows] == [r["name"] for r in rows[:2]]
    assert sweep.seeds == [123, 124, 125] and sweep.rows[0].config["num_epochs"] == 2
    assert sweep.rows[0].config["model_config"] == TINY

    again = cli(*flags(spam_csv_dir, byte_tokenizer_dir, tmp_path, candidates="last_layer,last_block",
                       budget="300s", out=tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert not json.loads((tmp_path / "again" / "suggestion.json").read_text())["cache"]["built"]


@pytest.mark.parametrize("bad, message", [
    ({"budget": "0.0000001"}, "--budget 0.0000001 (0.0s in all) leaves "),
    ({"budget": "2"}, "--budget '2': give a share"),
    ({"candidates": "last_layer,everything"}, "--candidates 'everything': invalid choice"),
    ({"candidates": "last_blocks:9", "write_sweep": "x.yaml"}, "--candidates last_blocks:9: N must be between 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(spam_csv_dir, byte_tokenizer_dir, tmp_path, bad, message):
    bad = {"candidates": "last_layer,last_block,all", **bad}
    done = cli(*flags(spam_csv_dir, byte_tokenizer_dir, tmp_path, out=tmp_path / "out", **bad), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("unfreeze suggest: error: ") and message in lines[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.yaml").exists()
