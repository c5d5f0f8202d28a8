"""`unfreeze classify` end to end on tiny models and data made by the tests (and the real data set)."""

import json
import subprocess
import sys

import pytest

from unfreeze.cli import main
from unfreeze.config import config_from_mapping
from unfreeze.errors import UsageError
from unfreeze.recipes.classify.recipe import run as run_config
from unfreeze.recipes.classify.config import ClassifyConfig

TINY = '{"n_layer":3,"n_embd":32,"n_head":2,"n_positions":128}'


def tiny_config(spam_csv_dir, tokenizer_dir, out, **options) -> ClassifyConfig:
    values = dict(weights="random", model_config=TINY, data=str(spam_csv_dir), tokenizer=str(tokenizer_dir),
                  num_epochs=2, batch_size=4, eval_freq=5, eval_iter=2, out=str(out), lr=1e-3)
    values.update(options)
    return config_from_mapping(ClassifyConfig, values)


@pytest.mark.parametrize("preset", ["last_layer", "last_block", "last_two_blocks"])
@pytest.mark.parametrize("pooling", [{}, {"trainable_token_pos": "flexible"}, {"average_embeddings": True},
                                     {"disable_causal_mask": True}])
def test_cached_run_equals_uncached_run(spam_csv_dir, byte_tokenizer_dir, tmp_path, preset, pooling):
    runs = {}
    for mode in ("off", "on"):
        cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / mode, trainable_layers=preset,
                          cache_activations=mode, **pooling)
        runs[mode] = run_config(cfg)
    assert runs["on"]["cache"]["kind"] in ("hidden", "pooled") and runs["off"]["cache"]["kind"] == "none"
    for key in ("train_acc", "val_acc", "test_acc"):
        assert runs["on"][key] == runs["off"][key], key
    for key in ("train_loss", "val_loss"):
        assert runs["on"]["history"][key] == pytest.approx(runs["off"]["history"][key], abs=1e-5), key
    # The memory estimate made before caching matches what was stored within 10%.
    cache = runs["on"]["cache"]
    assert abs(cache["estimated_bytes"] - cache["bytes"]) <= 0.1 * cache["bytes"]


@pytest.mark.parametrize("preset", ["all", "lora", "lora_alternative"])
def test_auto_never_caches_when_early_layers_train(spam_csv_dir, byte_tokenizer_dir, tmp_path, preset):
    cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, trainable_layers=preset, num_epochs=1,
                      lora_rank=2, lora_alpha=2)
    assert run_config(cfg)["cache"]["kind"] == "none"
    with pytest.raises(UsageError, match="cannot be exact"):
        run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, trainable_layers=preset,
                               cache_activations="on", num_epochs=1, overwrite=True))


def test_over_budget_cache_falls_back_to_no_cache(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, trainable_layers="last_block",
                      num_epochs=1, cache_budget_gb=1e-9)
    assert run_config(cfg)["cache"]["kind"] == "none"
    assert "exceeds the budget" in (tmp_path / "run.log").read_text()


def test_metrics_json_has_the_promised_fields(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, num_epochs=1))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train_acc", "val_acc", "test_acc", "train_time_s", "device", "trainable_params", "total_params",
                "max_length", "n_train", "n_val", "n_test", "examples_per_s", "cache", "config"):
        assert key in metrics, key
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (48, 16, 16)
    assert json.loads((tmp_path / "config.json").read_text())["trainable_layers"] == "last_block"
    assert 0 < metrics["trainable_params"] < metrics["total_params"]


def test_context_length_options_set_the_padded_length(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    longest = run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "a", num_epochs=1))["max_length"]
    import pandas as pd

    texts = pd.read_csv(spam_csv_dir / "train.csv")["Text"]
    assert longest == max(len(t.encode()) for t in texts)  # byte tokenizer: one token per byte
    assert run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "b", num_epochs=1,
                                  context_length="model_context_length"))["max_length"] == 128
    assert run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "c", num_epochs=1,
                                  context_length="20"))["max_length"] == 20


def test_no_padding_with_batch_size_one_and_accumulation(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    metrics = run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, num_epochs=1, no_padding=True,
                                     batch_size=1, accumulation_steps=4))
    assert metrics["history"]["examples_seen"] == 48


def test_ignore_index_drops_those_targets_from_the_loss(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    # Ignoring label 1 (spam) leaves only ham targets: the model learns to say ham, so it labels
    # every test message ham and scores exactly the ham fraction.
    metrics = run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path, trainable_layers="all",
                                     num_epochs=3, ignore_index=1, lr=5e-3))
    assert metrics["test_acc"] == pytest.approx(0.5)


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "unfreeze", "classify", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("extra, message", [
    (["--no_padding", "--batch_size", "2"], "--no_padding needs --batch_size 1"),
    (["--context_length", "5000"], "exceeds the model's context length"),
    (["--context_length", "long"], "--context_length"),
    (["--data", "/nonexistent/SMSSpamCollection"], "no such file"),
    (["--model_config", "{not json"], "--model_config is not valid JSON"),
])
def test_bad_input_is_one_line_exit_2_and_no_metrics(spam_csv_dir, byte_tokenizer_dir, tmp_path, extra, message):
    out = tmp_path / "run"
    args = ["--weights", "random", "--model_config", TINY, "--data", str(spam_csv_dir),
            "--tokenizer", str(byte_tokenizer_dir), "--out", str(out), *extra]
    result = _cli(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert not (out / "metrics.json").exists()


def test_unknown_choice_is_rejected_by_the_parser(tmp_path):
    result = _cli(["--trainable_layers", "middle"], tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.integration
def test_cli_learns_spam_on_the_real_data(shared_data, tmp_path):
    """The issue's done-when command: a 2-layer random GPT-2 reaches >= 90% test accuracy."""
    out = tmp_path / "x"
    code = main(["classify", "--weights", "random", "--model_config", '{"n_layer":2,"n_embd":128,"n_head":4}',
                 "--data", str(shared_data / "sms_spam" / "SMSSpamCollection"),
                 "--tokenizer", str(shared_data / "gpt2_bpe"), "--trainable_layers", "all",
                 "--num_epochs", "3", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (1045, 149, 300)
    assert metrics["max_length"] == 120  # the reference's longest training example
    assert metrics["test_acc"] >= 0.90


def test_pretrained_weights_from_a_local_folder(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    """`--model_size FOLDER --weights pretrained` loads a saved causal LM's body, not a fresh one."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from unfreeze.recipes.classify.model import body_config, build_model, model_source

    torch.manual_seed(7)
    saved = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128))
    saved.save_pretrained(tmp_path / "gpt2-tiny")
    cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", weights="pretrained",
                      model_size=str(tmp_path / "gpt2-tiny"), model_config=None, num_epochs=1)
    source = model_source(cfg)
    model, _ = build_model(cfg, source, body_config(source))
    assert torch.equal(model.body.h[1].attn.c_attn.weight, saved.transformer.h[1].attn.c_attn.weight)
    assert model.body.config.resid_pdrop == 0.0  # dropout is off, as in the reference
    assert run_config(cfg)["total_params"] == sum(p.numel() for p in model.parameters())


def test_missing_pretrained_folder_is_a_usage_error(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", weights="pretrained",
                      model_size=str(tmp_path / "absent"), model_config=None)
    with pytest.raises(UsageError, match="--model_size"):
        run_config(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_gradient_checkpointing_trains_the_same_weights(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    """`--gradient_checkpointing` recomputes activations in backward: the same function, so the same run."""
    runs = {}
    for flag in (False, True):
        cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / str(flag), trainable_layers="all",
                          num_epochs=1, gradient_checkpointing=flag, attn_implementation="eager")
        runs[flag] = run_config(cfg)
    assert runs[True]["history"]["train_loss"] == pytest.approx(runs[False]["history"]["train_loss"], abs=1e-6)
    assert runs[True]["test_acc"] == runs[False]["test_acc"]
    assert runs[True]["attn_implementation"] == "eager"
    for run in runs.values():  # memory: the device's peak where torch counts one (CUDA), the process's resident peak
        assert (run["peak_memory_bytes"] is None) == (run["device"] == "cpu") and run["peak_rss_bytes"] > 2**20


def test_gradient_checkpointing_recomputes_the_training_blocks_in_backward(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    """It is on: a training step runs each block's layers twice (once more in backward), and not without it. (The
    recompute calls the block's own `forward`, not its hooks: count a layer inside it.)"""
    import logging

    from unfreeze.recipes.classify import recipe

    calls = {}
    for flag in (False, True):
        cfg = tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / f"c{flag}", trainable_layers="all",
                          num_epochs=1, gradient_checkpointing=flag, eval_freq=1000)
        cfg, inputs = recipe.check(cfg)
        training = recipe.setup(cfg, inputs, logging.getLogger("test"))
        count = [0]
        training.model.blocks[0].mlp.c_fc.register_forward_hook(lambda *args: count.__setitem__(0, count[0] + 1))
        training.loop.advance(2)  # step 0 also runs the periodic evaluation's forwards: compare step 1 alone
        before = count[0]
        training.loop.advance(1)
        calls[flag] = count[0] - before
    assert (calls[False], calls[True]) == (1, 2)


def test_the_predictions_of_validation_and_test_are_written_and_agree_with_the_metrics(spam_csv_dir,
                                                                                       byte_tokenizer_dir, tmp_path):
    """`predictions.jsonl` (what the report links as the run's predictions): one record per example, whose
    correct answers are the accuracies in metrics.json."""
    import json

    metrics = run_config(tiny_config(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", num_epochs=1,
                                     save_model=False))
    rows = [json.loads(line) for line in (tmp_path / "run" / metrics["predictions_file"]).read_text().splitlines()]
    for split, key, count in (("validation", "val_acc", metrics["n_val"]), ("test", "test_acc", metrics["n_test"])):
        mine = [row for row in rows if row["split"] == split]
        assert [row["index"] for row in mine] == list(range(count))
        assert sum(row["correct"] for row in mine) / count == pytest.approx(metrics[key])
        assert {row["label"] for row in mine} <= {str(c) for c in metrics["class_names"]}
