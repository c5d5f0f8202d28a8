"""`unfreeze classify` on GPT-2, Llama, Qwen2 and GPT-NeoX: staged forward, padding, presets, cache.

Every model is a tiny random config made here; parameter counts are closed forms of the config, never
read back from the model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from unfreeze.cache.memory import build_cache, frozen_prefix_stages, plan_cache
from unfreeze.errors import UsageError
from unfreeze.models import trainable
from unfreeze.models.classifier import PAD_TOKEN_ID, DecoderClassifier
from unfreeze.models.structure import read_structure
from unfreeze.training.loop import ClassifierInputs

V, D, L, HEADS, KV, FF, C = 97, 32, 3, 4, 2, 48, 3  # vocabulary, width, blocks, heads, kv heads, MLP, classes
HD = D // HEADS
PAD = 0  # the non-GPT-2 models' pad token in these tests
RANK = 2


def make_config(arch: str):
    common = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS,
                  intermediate_size=FF, max_position_embeddings=64)
    config = {
        "gpt2": lambda: GPT2Config(vocab_size=50257, n_embd=D, n_layer=L, n_head=HEADS, n_positions=64),
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=KV),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=KV),
        "gpt_neox": lambda: GPTNeoXConfig(**common),
    }[arch]()
    config._attn_implementation = "sdpa"
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    return config


ARCHS = ("gpt2", "llama", "qwen2", "gpt_neox")


def make_model(arch: str, seed: int = 0, **kwargs) -> DecoderClassifier:
    torch.manual_seed(seed)
    body = AutoModel.from_config(make_config(arch))
    pad = PAD_TOKEN_ID if arch == "gpt2" else PAD
    return DecoderClassifier(body, num_classes=C, pad_token_id=pad, **kwargs).eval()


def padded_batch(arch: str, lengths=(10, 6, 3), seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), max(lengths)), generator=generator)
    for row, length in enumerate(lengths):
        ids[row, length:] = PAD_TOKEN_ID if arch == "gpt2" else PAD
    return ids


# --- closed-form parameter counts ---------------------------------------------------------------------


def block_params(arch: str) -> dict[str, int]:
    """Per block: all parameters, biases, norm parameters, LoRA parameters at rank RANK."""
    kv = KV * HD
    if arch == "gpt2":  # c_attn (3 updates), c_proj, c_fc (4d), mlp c_proj; two LayerNorms
        return {"all": 12 * D * D + 13 * D, "bias": 11 * D, "norms": 4 * D,
                "lora": RANK * (3 * 2 * D + 2 * D + 5 * D + 5 * D)}
    if arch in ("llama", "qwen2"):  # q, k, v, o; gate, up, down; two RMSNorms (weight only)
        qkv_bias = D + 2 * kv if arch == "qwen2" else 0
        return {"all": 2 * D * D + 2 * D * kv + 3 * D * FF + qkv_bias + 2 * D, "bias": qkv_bias, "norms": 2 * D,
                "lora": RANK * (2 * D + 2 * (D + kv) + 2 * D + 3 * (D + FF))}
    # gpt_neox: fused query_key_value, dense; dense_h_to_4h, dense_4h_to_h (all with bias); two LayerNorms
    return {"all": 4 * D * D + 4 * D + 2 * D * FF + FF + D + 4 * D, "bias": 7 * D + FF, "norms": 4 * D,
            "lora": RANK * (4 * D + 2 * D + 2 * (D + FF))}


def final_norm_params(arch: str) -> int:
    return D if arch in ("llama", "qwen2") else 2 * D


def expected_count(arch: str, preset: str) -> int:
    block, head, norm = block_params(arch), D * C + C, final_norm_params(arch)
    embeddings = (50257 + 64) * D if arch == "gpt2" else V * D
    return {
        "last_layer": head,
        "last_block": block["all"] + norm + head,
        "last_two_blocks": 2 * block["all"] + norm + head,
        "last_blocks:2": 2 * block["all"] + norm + head,
        "last_blocks:3": 3 * block["all"] + norm + head,
        "blocks:0-1": 2 * block["all"] + head,  # the final norm trains only with the last block
        "all": embeddings + L * block["all"] + norm + head,
        "bias": L * block["bias"] + (D if arch != "llama" and arch != "qwen2" else 0) + head,
        "norms": L * block["norms"] + norm + head,
        "lora": L * block["lora"] + RANK * (D + C) + head,
    }[preset]


PRESETS = ("last_layer", "last_block", "last_two_blocks", "last_blocks:2", "last_blocks:3", "blocks:0-1", "all", "bias", "norms",
           "lora")


# --- the staged forward, padding and pooling -----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_staged_features_equal_the_models_own_forward(arch):
    model = make_model(arch)
    ids = padded_batch(arch)
    with torch.no_grad():
        if arch == "gpt2":  # the reference's semantics: no attention mask
            expected = model.body(ids).last_hidden_state
        else:
            expected = model.body(ids, attention_mask=(torch.arange(ids.shape[1]) < torch.tensor([10, 6, 3])[:, None])
                                  .long()).last_hidden_state
        assert torch.allclose(model.features(ids), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_structure_is_read_from_modules(arch):
    model = make_model(arch)
    assert model.num_blocks == L and model.hidden_size == D
    s = model.structure
    rotary = [m for m in s.before if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    positions = [m for m in s.before if isinstance(m, torch.nn.Embedding) and m is not s.token_embedding]
    assert len(rotary) == (arch != "gpt2") and len(positions) == (arch == "gpt2")  # read from the traced pass
    assert s.token_embedding in s.before and s.after == [model.final_norm] and not s.within
    assert any(p is model.final_norm.weight for p in model.body.parameters())


def test_a_model_without_blocks_is_one_clear_error():
    body = torch.nn.Module()
    body.config = LlamaConfig(num_hidden_layers=2)
    body.get_input_embeddings = lambda: torch.nn.Embedding(3, 4)
    with pytest.raises(UsageError, match="ModuleList of num_hidden_layers=2 blocks"):
        read_structure(body)


@pytest.mark.parametrize("arch", ("llama", "qwen2", "gpt_neox"))
@pytest.mark.parametrize("pooling", ("last", "flexible", "mean", "mean_bidirectional"))
def test_an_example_gives_the_same_logits_alone_and_in_a_padded_batch(arch, pooling):
    # Causal attention alone keeps right padding away from real tokens; without it only the mask does.
    model = make_model(arch, token_pos="flexible" if pooling == "flexible" else "last",
                       average=pooling.startswith("mean"), causal=pooling != "mean_bidirectional")
    lengths = (10, 6, 3)
    ids = padded_batch(arch, lengths)
    with torch.no_grad():
        batched = model(ids)
        alone = torch.cat([model(ids[row:row + 1, :n]) for row, n in enumerate(lengths)])
    assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()


def test_gpt2_keeps_the_reference_padding_semantics():
    model = make_model("gpt2")
    ids = padded_batch("gpt2")
    with torch.no_grad():
        hidden = model.features(ids)
        assert torch.equal(model.pool(hidden, ids), hidden[:, -1])  # `last` = the padded last position
        model.average = True
        assert torch.equal(model.pool(hidden, ids), hidden.mean(dim=1))  # mean over every position


# --- presets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_exactly_what_it_names(arch, preset):
    model = make_model(arch)
    if expected_count(arch, preset) == D * C + C and preset != "last_layer":  # Llama has no bias terms
        with pytest.raises(UsageError, match=f"--trainable_layers {preset}: LlamaModel has no bias terms, so only "
                                             "the new head would train; use --trainable_layers last_layer"):
            trainable.apply_preset(model, preset, lora_rank=RANK, lora_alpha=4, seed=0)
        return
    summary = trainable.apply_preset(model, preset, lora_rank=RANK, lora_alpha=4, seed=0)
    assert summary.trainable_params == expected_count(arch, preset), summary.tensors
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids, labels = padded_batch(arch), torch.tensor([0, 1, 2])
    model.train()
    for _ in range(3):
        torch.nn.functional.cross_entropy(model(ids), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("preset,fragment", [("last_blocks:0", "between 1 and"), ("last_blocks:4", "between 1 and"),
                                             ("blocks:2-3", "blocks 0-2"), ("blocks:2-1", "A <= B"),
                                             ("middle", "invalid choice")])
def test_bad_block_presets_are_usage_errors(preset, fragment):
    with pytest.raises(UsageError, match=fragment):
        trainable.preset_selection(make_model("llama"), preset)


# --- the activation cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_uncached_for_every_cacheable_preset(arch):
    tokens = {"train": list(padded_batch(arch, (9, 9, 4, 2), seed=3).unbind(0))}
    indices = torch.tensor([2, 0, 3])
    cacheable = []
    for preset in PRESETS:
        model = make_model(arch)
        if arch == "llama" and preset == "bias":
            continue  # no bias terms: a UsageError (test_every_preset_trains_exactly_what_it_names)
        trainable.apply_preset(model, preset, lora_rank=RANK, lora_alpha=4, seed=0)
        frozen = frozen_prefix_stages(model.stage_modules())
        plan = plan_cache(model, frozen, [9] * 4, model.hidden_size, torch.float32)
        if not plan.enabled:
            continue
        cacheable.append(preset)
        cache = build_cache(model, plan, tokens, torch.device("cpu"), 2, None)
        with torch.no_grad():
            cached = ClassifierInputs(model, tokens, cache, torch.device("cpu"), None)("train", indices)
            uncached = ClassifierInputs(model, tokens, None, torch.device("cpu"), None)("train", indices)
        assert torch.allclose(cached, uncached, atol=1e-5), (preset, (cached - uncached).abs().max())
    expected = ["last_layer", "last_block", "last_two_blocks", "last_blocks:2"]  # last_blocks:3 = every block
    assert cacheable[:4] == expected and set(cacheable) - set(expected) <= {"bias"}, cacheable


def test_lora_wraps_every_linear_layer_of_a_llama():
    model = make_model("llama")
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    trainable.apply_preset(copy.deepcopy(model), "lora", lora_rank=RANK, lora_alpha=4, seed=0)
    assert linear == L * 7 + 1  # q, k, v, o, gate, up, down per block, and the head


# --- a real pretrained model through the real CLI -----------------------------------------------------


@pytest.mark.real_weights
def test_smollm2_gguf_learns_spam_through_the_cli(smollm2_gguf, shared_data, tmp_path):
    """A shortened version of the issue's done-when command (about 60 s on 2 shared cores)."""
    import json
    import os
    import subprocess
    import sys

    rows = (shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    spam = [r for r in rows if r.startswith("spam\t")][:60]
    ham = [r for r in rows if r.startswith("ham\t")][:60]
    data = tmp_path / "SMSSpamCollection"
    data.write_text("\n".join(ham + spam) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "unfreeze", "classify", "--model", str(smollm2_gguf),
                             "--data", str(data), "--trainable_layers", "last_block", "--num_epochs", "2",
                             "--lr", "1e-4", "--eval_freq", "5", "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cache"]["kind"] == "hidden" and metrics["cache"]["start_stage"] == 30  # 29 frozen blocks cached
    assert metrics["train_acc"] >= 0.8 and metrics["test_acc"] >= 0.75, metrics
    assert metrics["history"]["train_loss"][-1] < metrics["history"]["train_loss"][0]


# --- the classify command on a non-GPT-2 model --------------------------------------------------------


@pytest.mark.parametrize("pooling", [{}, {"average_embeddings": True}, {"disable_causal_mask": True}])
def test_classify_runs_a_llama_folder_cached_equal_to_uncached(spam_csv_dir, byte_tokenizer_dir, tmp_path, pooling):
    from unfreeze.config import config_from_mapping
    from unfreeze.recipes.classify.recipe import run as run_config
    from unfreeze.recipes.classify.config import ClassifyConfig

    folder = tmp_path / "llama"
    config = make_config("llama")
    config.vocab_size, config.pad_token_id = 300, 0  # the byte tokenizer's ids fit
    config.save_pretrained(folder)
    runs = {}
    for mode in ("off", "on"):
        values = dict(model=str(folder), weights="random", data=str(spam_csv_dir), tokenizer=str(byte_tokenizer_dir),
                      trainable_layers="last_two_blocks", num_epochs=1, batch_size=4, eval_freq=5, eval_iter=2,
                      out=str(tmp_path / mode), lr=1e-3, cache_activations=mode, **pooling)
        runs[mode] = run_config(config_from_mapping(ClassifyConfig, values))
    assert runs["on"]["cache"]["kind"] == "hidden" and runs["on"]["cache"]["start_stage"] == 2
    # classify gives models other than GPT-2 transformers' own head: 2 classes, no bias
    assert runs["on"]["trainable_params"] == expected_count("llama", "last_two_blocks") - C * D - C + 2 * D
    for key in ("train_acc", "val_acc", "test_acc"):
        assert runs["on"][key] == runs["off"][key], key
    assert runs["on"]["history"]["train_loss"] == pytest.approx(runs["off"]["history"]["train_loss"], abs=1e-5)
