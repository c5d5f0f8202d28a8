"""classify's `final/`: plain transformers (AutoModelForSequenceClassification, pipeline) and peft (PeftModel) load
what the run trained and give its logits; a rerun never replaces it without --overwrite; a killed save leaves
nothing a loader would accept."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, Qwen2Config, pipeline

from unfreeze.cli import main
from unfreeze.config import config_from_mapping
from unfreeze.export import classifier_folder
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.classify.recipe import run

GPT2_TINY = '{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":128}'


@pytest.fixture
def trained(monkeypatch):
    """The classifier each run saves, caught on its way into `save_classifier`."""
    caught = []
    original = classifier_folder.save_classifier

    def spy(model, *args, **kwargs):
        caught.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(classifier_folder, "save_classifier", spy)
    return caught


def model_folder(tmp_path, arch: str):
    """A tiny pretrained model folder (random weights saved) for --model, its vocabulary the byte tokenizer's."""
    common = dict(vocab_size=260, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=128, pad_token_id=256, eos_token_id=256)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)
    torch.manual_seed(0)
    folder = tmp_path / arch
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def classify(data, tokenizer, out, **options) -> dict:
    values = dict(data=str(data), tokenizer=str(tokenizer), num_epochs=1, batch_size=4, lr=1e-2, out=str(out))
    if "model" not in options:
        values.update(weights="random", model_config=GPT2_TINY)
    values.update(options)
    return run(config_from_mapping(ClassifyConfig, values))


# Unpadded texts (where every pooling rule meets), then a right-padded batch of different lengths.
TEXTS = ["WIN CASH NOW", "see you at dinner later", "FREE PRIZE CALL"]


def unpadded(tokenizer_dir) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return [torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in TEXTS]


def padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :row.shape[1]], mask[i, :row.shape[1]] = row[0], 1
    return ids, mask


@pytest.mark.parametrize("arch,options", [("gpt2", {"trainable_token_pos": "flexible"}), ("gpt2", {}),
                                          ("llama", {}), ("qwen2", {"trainable_layers": "last_blocks:2"})])
def test_plain_transformers_gives_the_runs_logits(spam_csv_dir, byte_tokenizer_dir, tmp_path, trained, arch, options):
    if arch != "gpt2":
        options = {**options, "model": str(model_folder(tmp_path, arch))}
    metrics = classify(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", **options)
    final = tmp_path / "run" / "final"
    ours = trained[-1].eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert theirs.config.id2label == {0: "0", 1: "1"} and theirs.config.pad_token_id == ours.pad_token_id
    rows = unpadded(byte_tokenizer_dir)
    with torch.no_grad():
        for ids in rows:  # every rule agrees on a text alone
            assert torch.allclose(theirs(ids).logits, ours(ids), atol=1e-5)
        ids, mask = padded(rows, ours.pad_token_id)
        agreement = metrics["final"]["transformers_pooling_agrees"]
        if agreement == "always":  # padded batches too (GPT-2 `last` pools the padded last position: not this)
            assert torch.allclose(theirs(input_ids=ids, attention_mask=mask).logits, ours(ids), atol=1e-5)
        else:
            assert agreement == "unpadded inputs" and "padding included" in (final / "README.md").read_text()
    scores = pipeline("text-classification", model=str(final), top_k=None)([TEXTS[0]])[0]
    probabilities = torch.softmax(ours(rows[0])[0], dim=-1)
    assert {s["label"]: round(s["score"], 5) for s in scores} == {
        str(i): round(p.item(), 5) for i, p in enumerate(probabilities)}


@pytest.mark.parametrize("layout", ["peft", "reference"])
def test_lora_run_saves_a_peft_adapter_and_the_merged_model(spam_csv_dir, byte_tokenizer_dir, tmp_path, trained,
                                                            layout):
    from peft import PeftModel

    base = model_folder(tmp_path, "llama")
    metrics = classify(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", model=str(base), trainable_layers="lora",
                       lora_rank=2, lora_layout=layout)
    final = tmp_path / "run" / "final"
    assert metrics["final"]["adapter"] and (final / "adapter" / "adapter_config.json").is_file()
    ours = trained[-1].eval()
    plain = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, pad_token_id=256)
    adapted = PeftModel.from_pretrained(plain, str(final / "adapter")).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(final).eval()
    with torch.no_grad():
        for ids in unpadded(byte_tokenizer_dir):
            assert torch.allclose(adapted(ids).logits, ours(ids), atol=1e-5)
            assert torch.allclose(merged(ids).logits, ours(ids), atol=1e-5)


def test_gpt2_reference_lora_is_saved_merged_only_and_says_why(spam_csv_dir, byte_tokenizer_dir, tmp_path, trained):
    metrics = classify(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", trainable_layers="lora", lora_rank=2)
    final = tmp_path / "run" / "final"
    assert not metrics["final"]["adapter"] and not (final / "adapter").exists()
    assert "random base weights" in (final / "README.md").read_text()
    ours = trained[-1].eval()
    merged = AutoModelForSequenceClassification.from_pretrained(final).eval()
    with torch.no_grad():
        for ids in unpadded(byte_tokenizer_dir):
            assert torch.allclose(merged(ids).logits, ours(ids), atol=1e-5)


def test_model_card_and_export(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    metrics = classify(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", trainable_layers="last_block",
                       export=str(tmp_path / "export"))
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    for needed in ("gpt2-small (124M)", "random weights", str(spam_csv_dir), "trainable: last_block",
                   "unfreeze classify --weights random", "| test_acc |"):
        assert needed in card, needed
    record = json.loads((tmp_path / "export" / "export.json").read_text())
    assert set(record["written"]) == {"axolotl", "names"}  # PEFT needs an adapter; LLaMA-Factory has no classifier
    assert "no adapter" in record["not_written"]["peft"] and "classification" in record["not_written"]["llamafactory"]
    names = (tmp_path / "export" / "trainable_parameters.txt").read_text().split()
    assert names[-1] == "score.weight" and metrics["export"]["written"] == record["written"]


def test_save_model_false_saves_nothing(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    metrics = classify(spam_csv_dir, byte_tokenizer_dir, tmp_path / "run", save_model=False)
    assert "final" not in metrics and not (tmp_path / "run" / "final").exists()


def test_a_rerun_never_replaces_final_without_overwrite(spam_csv_dir, byte_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["classify", "--weights", "random", "--model_config", GPT2_TINY, "--data", str(spam_csv_dir),
            "--tokenizer", str(byte_tokenizer_dir), "--num_epochs", "1", "--batch_size", "4", "--out", str(out)]
    assert main(args) == 0
    weights = (out / "final" / "model.safetensors").read_bytes()
    assert main([*args, "--seed", "7"]) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    assert main([*args, "--seed", "7", "--overwrite"]) == 0
    assert (out / "final" / "model.safetensors").read_bytes() != weights


def test_a_save_killed_midway_leaves_no_folder_or_the_previous_one(spam_csv_dir, byte_tokenizer_dir, tmp_path,
                                                                   monkeypatch):
    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # killed while writing the card, the last file
        patch.setattr(classifier_folder, "atomic_write_text", killed)
        with pytest.raises(KeyboardInterrupt):
            classify(spam_csv_dir, byte_tokenizer_dir, out)
    assert not (out / "final").exists() and not list(out.glob(".final*")) and not (out / "metrics.json").exists()
    classify(spam_csv_dir, byte_tokenizer_dir, out)
    weights = (out / "final" / "model.safetensors").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(classifier_folder, "atomic_write_text", killed)
        with pytest.raises(KeyboardInterrupt):
            classify(spam_csv_dir, byte_tokenizer_dir, out, seed=5, overwrite=True)
    assert (out / "final" / "model.safetensors").read_bytes() == weights and (out / "final" / "README.md").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".final")) == []


def test_a_sweep_runs_model_card_names_its_row(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    import yaml

    sweep = tmp_path / "table.yaml"
    sweep.write_text(yaml.safe_dump({
        "command": "classify", "seeds": [11],
        "settings": {"weights": "random", "model_config": GPT2_TINY, "data": str(spam_csv_dir),
                     "tokenizer": str(byte_tokenizer_dir), "num_epochs": 1, "batch_size": 4},
        "rows": [{"name": "head_only", "options": {"trainable_layers": "last_layer"}, "published": {"test_acc": 0.9}}],
    }), encoding="utf-8")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "sw")]) == 0
    card = (tmp_path / "sw" / "runs" / "head_only" / "seed-11" / "final" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| sweep row |"))
    assert "'row': 'head_only'" in row and "'seed': 11" in row and "'published': {'test_acc': 0.9}" in row
    assert "table.yaml" in row
