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
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest import output
from unfreeze.recipes.suggest.setup import classify_config, prepare
from unfreeze.sweep.spec import load_sweep
from unfreeze.recipes.suggest.recipe import make_arms, start_loops
from unfreeze.recipes.suggest.config import SuggestConfig

TINY = '{"n_layer":3,"n_embd":32,"n_head":2,"n_positions":128}'
LOG = logging.getLogger("test_suggest")


def options(spam_csv_dir, tokenizer_dir, tmp_path, **changes) -> dict:
    values = dict(weights="random", model_config=TINY, data=str(spam_csv_dir), tokenizer=str(tokenizer_dir),
                  num_epochs=2, batch_size=4, lr=1e-3, device="cpu", feature_cache_dir=str(tmp_path / "features"))
    values.update(changes)
    return values


def trained_by_classify(cfg, name: str):
    """The classifier `unfreeze classify` trains with suggest's options and `--trainable_layers name`."""
    from unfreeze.recipes.classify import recipe as classify

    run_cfg, inputs = classify.check(classify_config(cfg, trainable_layers=name), LOG)
    training = classify.setup(run_cfg, inputs, LOG)
    training.loop.advance()
    return training


def trained_candidate(cfg, name: str, tmp_path, rounds=(3, 10**6)):
    """Candidate `name` as `unfreeze suggest` trains it: from the shared disk cache, in rounds, with a validation
    pass between them, and the caller's random state disturbed."""
    setup = prepare(cfg, LOG)
    for p in setup.base_model.parameters():
        p.requires_grad_(False)  # as suggest leaves the shared model before it copies it for each candidate
    arm = make_arms([name], setup)[0]
    final = setup.base_model.final_stage
    cache, _ = disk.get_or_build(setup.base_model, setup.tokens, tmp_path / "features",
                                 [arm.start] if 2 <= arm.start <= final else [], "fp32", setup.device)
    start_loops([arm], setup, cache)
    torch.manual_seed(999)  # the loop keeps its own random state: the caller's must not matter
    for steps in rounds:
        arm.advance(steps)
        arm.evaluate()  # an evaluation between rounds changes nothing
    return arm


@pytest.mark.parametrize("name", ["last_layer", "last_block", "last_blocks:2", "bias", "lora", "all"])
def test_a_candidate_trained_to_its_end_has_classifys_weights_bit_for_bit(spam_csv_dir, byte_tokenizer_dir, tmp_path,
                                                                           name):
    """Not equal accuracies: equal tensors. LoRA in the reference layout with the reference's A draw (from the
    global generator right after the head), so a private seed for the candidates would fail here."""
    cfg = config_from_mapping(SuggestConfig, options(spam_csv_dir, byte_tokenizer_dir, tmp_path, eval_every=5,
                                                     eval_batches=2))
    arm = trained_candidate(cfg, name, tmp_path)
    assert arm.done and arm.steps_done == 2 * (48 // 4)
    assert arm.loop.inputs.reader is not None or name not in ("last_layer", "last_block", "last_blocks:2")
    classify = trained_by_classify(cfg, name)
    mine, theirs = arm.model.state_dict(), classify.model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    assert arm.summary.trainable_params == classify.summary.trainable_params
    assert arm.loop.evaluate("test") == classify.loop.evaluate("test")


def test_interleaved_candidates_are_not_disturbed_by_each_other(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    """Two candidates advanced in alternation end where each ends alone."""
    cfg = config_from_mapping(SuggestConfig, options(spam_csv_dir, byte_tokenizer_dir, tmp_path))
    setup = prepare(cfg, LOG)
    for p in setup.base_model.parameters():
        p.requires_grad_(False)
    arms = make_arms(["lora", "last_layer"], setup)
    cache, _ = disk.get_or_build(setup.base_model, setup.tokens, tmp_path / "features", [], "fp32", setup.device)
    start_loops(arms, setup, cache)
    for steps in (1, 4, 100):  # rounds, interleaved
        for arm in arms:
            arm.advance(steps)
    alone = trained_candidate(cfg, "lora", tmp_path, rounds=(10**6,))
    for (key, mine), (_, theirs) in zip(arms[0].model.state_dict().items(), alone.model.state_dict().items()):
        assert torch.equal(mine, theirs), key


def test_candidates_are_classify_presets_and_start_where_their_frozen_prefix_ends():
    from transformers import GPT2Config, GPT2Model

    from unfreeze.models.classifier import GPT2Classifier

    config = GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2Classifier(GPT2Model(config))
    trainable.apply_preset(model, "last_blocks:2")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if n.startswith(("body.h.1.", "body.h.2.", "body.ln_f", "head"))}
    assert cand.start_stage(model) == 2
    trainable.apply_preset(model, "bias")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in trained and "body.h.0.attn.c_attn.bias" in trained and "body.ln_f.bias" in trained
    assert all(n.endswith("bias") or n == "head.weight" for n in trained)
    assert cand.start_stage(model) == 0  # block 0's biases train: nothing but the embeddings is frozen
    trainable.apply_preset(model, "last_layer")
    assert cand.start_stage(model) == model.final_stage + 1  # only the head: pooled features
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
    # the sweep it is a share of: 5 x 3 runs; random weights: every seed builds its own cache (pooled, then two
    # rebuilds for boundaries 3 and 2); suggest's time against it, said in the JSON and the output
    predicted = result["sweep"]
    assert len(predicted["runs"]) == 15 and predicted["builds"] == 9 and predicted["cached_before"] is None
    runs_s = sum(r["run_s"] for r in predicted["runs"])
    assert result["sweep_predicted_s"] == pytest.approx(predicted["checks_s"] + runs_s, abs=0.05)
    assert result["spent_share"] == pytest.approx(result["spent_s"] / result["sweep_predicted_s"], rel=1e-2)
    assert result["budget_counts"] == "wall" and result["machine"]["threads"] == 1
    assert "steps" in done.stdout.splitlines()[0] and "time/run (±" in done.stdout
    assert f"= {result['spent_share']:.2f} of the predicted sweep" in done.stdout
    assert (out / "suggestion.png").read_bytes()[:4] == b"\x89PNG"
    sweep = load_sweep(sweep_file)
    # every candidate is a classify preset now: the top two, whatever they are (last_blocks:2 included)
    assert [row.name for row in sweep.rows] == [output.row_name(r["name"]) for r in rows[:2]]
    assert [row.config["trainable_layers"] for row in sweep.rows] == [r["name"] for r in rows[:2]]
    assert sweep.seeds == [123, 124, 125] and sweep.rows[0].config["num_epochs"] == 2
    assert sweep.rows[0].config["model_config"] == TINY

    assert sweep.rows[0].config["feature_cache_dir"] == str((tmp_path / "features").resolve())  # reads suggest's

    again = cli(*flags(spam_csv_dir, byte_tokenizer_dir, tmp_path, candidates="last_layer,last_block",
                       budget="300s", out=tmp_path / "again", seeds=1))
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "again" / "suggestion.json").read_text())
    assert not second["cache"]["built"]
    assert second["sweep"]["builds"] == 0 and second["sweep"]["cached_before"] == [2, 3]  # already on disk


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
