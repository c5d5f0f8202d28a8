"""The tasks as Python functions: configs or keywords in, a Result out, UsageError instead of an exit."""

from __future__ import annotations

import json

import pytest
from test_sft import _tiny_config

import unfreeze
from unfreeze.recipes.classify.config import ClassifyConfig

TINY = '{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":128}'


def test_classify_takes_a_config_and_keywords_and_returns_its_metrics(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    config = ClassifyConfig(weights="random", model_config=TINY, data=str(spam_csv_dir),
                            tokenizer=str(byte_tokenizer_dir), num_epochs=1, batch_size=4)
    result = unfreeze.classify(config, out=str(tmp_path / "run"), trainable_layers="last_layer")
    assert result.metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["trainable_params"] == 32 * 2 + 2 and result.final == tmp_path / "run" / "final"
    assert config.out is None  # the caller's config is left as it was


@pytest.mark.parametrize("call, message", [
    (lambda: unfreeze.classify(num_epochs="many"), "num_epochs"),
    (lambda: unfreeze.classify(no_such_option=1), "no_such_option"),
    (lambda: unfreeze.classify(unfreeze.SFTConfig()), "expected a ClassifyConfig"),
    (lambda: unfreeze.export_choice(choice="blocks:1-1", model="gpt2", to="llamafactory"), "first or the last blocks"),
])
def test_bad_input_raises_usage_error(call, message):
    with pytest.raises(unfreeze.UsageError, match=message):
        call()


def test_sft_reads_a_yaml_file_and_keywords(tmp_path, pause_data):
    result = unfreeze.sft(str(_tiny_config(tmp_path, pause_data)), num_epochs=1, out=str(tmp_path / "run"))
    assert result.final == tmp_path / "run" / "final" and "eval_loss" in result.metrics


def test_suggest_returns_its_ranking_and_exports_the_top_candidates(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    result = unfreeze.suggest(weights="random", model_config=TINY, data=str(spam_csv_dir),
                              tokenizer=str(byte_tokenizer_dir), num_epochs=1, batch_size=4, device="cpu",
                              candidates="last_layer,last_block,lora", budget="300s", top=2,
                              feature_cache_dir=str(tmp_path / "features"), export=str(tmp_path / "export"))
    rows = result.metrics["candidates"]
    assert result.metrics["pick"] == rows[0]["name"] and len(rows) == 3
    listed = json.loads((tmp_path / "export" / "export.json").read_text())
    assert listed["pick"] == rows[0]["name"]
    assert [c["name"] for c in listed["candidates"]] == [r["name"] for r in rows[:2]]
    for entry in listed["candidates"]:
        folder = tmp_path / "export" / entry["dir"]
        assert (folder / "trainable_parameters.txt").is_file() and (folder / "export.json").is_file()
