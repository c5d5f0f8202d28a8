"""The seed sweep files run what the references ran: generation budget and batch, pause tokenisation, LoRA layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unfreeze.config import config_from_mapping
from unfreeze.sweep.spec import load_sweep

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "pause").glob("*.yaml")), ids=lambda p: p.name)
def test_pause_configs_generate_like_the_reference(path):
    from unfreeze.recipes.sft.config import SFTConfig

    config = config_from_mapping(SFTConfig, yaml.safe_load(path.read_text()), str(path))
    assert config.test_max_length == 1024 and config.test_batch_size == 8
    assert config.max_new_tokens >= config.test_max_length  # so the total budget is the tighter one
    assert config.pause_tokenization == ("reference" if config.pause_token else "exact")


def test_pause_sweep_rows_carry_the_reference_settings():
    sweep = load_sweep(EXPERIMENTS / "pause_warmup.yaml")
    for row in sweep.rows:
        assert row.config["test_max_length"] == 1024 and row.config["test_batch_size"] == 8, row.name
        if row.config["pause_token"]:
            assert row.config["pause_tokenization"] == "reference", row.name
    as_run = sweep.row("sft_fr_pembed_unfr_lm_head_embed_peft_as_run")
    assert "as the reference ran" in as_run.label and as_run.note


def test_spam_lora_rows_use_the_reference_layout():
    sweep = load_sweep(EXPERIMENTS / "spam_additional.yaml")
    lora_rows = [row for row in sweep.rows if row.config["trainable_layers"].startswith("lora")]
    assert lora_rows and all(row.config["lora_layout"] == "reference" for row in lora_rows)
