"""`unfreeze.select` on Hugging Face model objects: the same choice as `unfreeze classify` makes on its own
classifier, read from structure, on tiny GPT-2, Llama, Qwen2 and GPT-NeoX models and on a PeftModel."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          GPTNeoXConfig, LlamaConfig, Qwen2Config)

import unfreeze
from unfreeze.errors import UsageError
from unfreeze.models.classifier import DecoderClassifier
from unfreeze.models.trainable import preset_selection

V, D, L, C = 120, 32, 3, 3


def make_config(arch: str):
    common = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, tie_word_embeddings=False, num_labels=C, pad_token_id=0)
    return {
        "gpt2": lambda: GPT2Config(vocab_size=V, n_embd=D, n_layer=L, n_head=4, n_positions=64,
                                   tie_word_embeddings=False, num_labels=C, pad_token_id=0),
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),
        "gpt_neox": lambda: GPTNeoXConfig(**common),
    }[arch]()


ARCHS = ("gpt2", "llama", "qwen2", "gpt_neox")
PRESETS = ("last_layer", "last_block", "last_blocks:2", "blocks:0-1", "bias", "norms", "all", "lora")


def classifier_names(arch: str, preset: str, prefix: str) -> set[str]:
    """What classify's own classifier trains for `preset`, in a sequence classifier's names: the stack under its
    base-model prefix, the head as `score` (transformers' head has no bias)."""
    model = DecoderClassifier(AutoModel.from_config(make_config(arch)), num_classes=C)
    chosen = {id(p) for p in preset_selection(model, preset, lora_rank=2, lora_alpha=4, lora_layout="peft").params}
    renamed = set()
    for name, param in model.named_parameters():
        if id(param) in chosen and name != "head.bias" and not name.startswith("head.base_layer.bias"):
            renamed.add(f"{prefix}.{name[5:]}" if name.startswith("body.") else "score" + name[4:])
    return renamed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_select_on_a_sequence_classifier_is_classifys_choice(arch, preset):
    model = AutoModelForSequenceClassification.from_config(make_config(arch))
    if arch == "llama" and preset == "bias":  # no bias terms beyond the head: refused by both, in one line
        with pytest.raises(UsageError, match="has no bias terms, so only the output layer would train"):
            unfreeze.select(model, preset)
        with pytest.raises(UsageError, match="has no bias terms, so only the new head would train"):
            classifier_names(arch, preset, model.base_model_prefix)
        return
    chosen = unfreeze.select(model, preset, lora_rank=2, lora_alpha=4)
    assert set(chosen.names) == classifier_names(arch, preset, model.base_model_prefix)
    assert chosen.trainable_params == sum(p.numel() for p in chosen.parameters)
    assert chosen.total_params == sum(p.numel() for p in model.parameters())
    assert chosen.lines()[0].startswith(f"trainable: {preset} -> {len(chosen.names)} tensors")


@pytest.mark.parametrize("arch", ARCHS)
def test_on_a_causal_lm_the_output_layer_is_the_lm_head(arch):
    with torch.device("meta"):  # no weights needed to name what trains
        model = AutoModelForCausalLM.from_config(make_config(arch))
    head = {f"{name}.{p}" for name, module in model.named_modules() if module is model.get_output_embeddings()
            for p, _ in module.named_parameters()}
    assert set(unfreeze.select(model, "last_layer").names) == head
    last = {n for n, _ in model.named_parameters() if f".{L - 1}." in n}
    norm = {n for n, _ in model.base_model.named_parameters() if n.startswith(("norm.", "ln_f.", "final_layer_norm."))}
    prefix = model.base_model_prefix
    assert set(unfreeze.select(model, "last_block").names) == last | head | {f"{prefix}.{n}" for n in norm}


def test_apply_trains_exactly_the_selection_and_steps_change_only_it():
    model = AutoModelForCausalLM.from_config(make_config("llama"))
    chosen = unfreeze.select(model, "last_blocks:2").apply()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(chosen.names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1, V, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == set(chosen.names)


def test_a_peft_model_trains_its_own_adapters_and_head_under_lora():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForSequenceClassification.from_config(make_config("qwen2")),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    peft_trains = {n for n, p in model.named_parameters() if p.requires_grad}
    chosen = unfreeze.select(model, "lora")
    assert set(chosen.names) == peft_trains  # peft's own choice: its adapters and its copy of the score head
    last = unfreeze.select(model, "last_block").apply()
    names = set(last.names)
    assert any(".layers.2.self_attn.q_proj.lora_A." in n for n in names)  # a block's adapters are its parameters
    assert any("score.modules_to_save.default.weight" in n for n in names) and "model.norm.weight" in " ".join(names)
    assert not any(".layers.1." in n or "original_module" in n for n in names)


def test_a_model_without_an_output_layer_is_one_clear_error():
    with pytest.raises(UsageError, match="has no output layer"):
        unfreeze.select(AutoModel.from_config(make_config("llama")), "last_block")
    assert len(unfreeze.select(AutoModel.from_config(make_config("llama")), "all").names) > 0


def test_tied_output_layer_is_said():
    config = make_config("gpt2")
    config.tie_word_embeddings = True
    chosen = unfreeze.select(AutoModelForCausalLM.from_config(config), "last_layer")
    assert chosen.names == ["transformer.wte.weight"] and "tied" in "\n".join(chosen.lines())


def test_the_final_norm_is_found_where_it_runs_not_where_it_is_registered():
    """OPT registers its final norm before its blocks; a traced pass (of the model, or on the meta device of a
    small twin with the same switches) finds it after them, so `last_block` trains it, as classify does."""
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                       word_embed_proj_dim=32, max_position_embeddings=64)
    real = AutoModelForCausalLM.from_config(config)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    for model in (real, meta):
        names = set(unfreeze.select(model, "last_block").names)
        assert {"model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"} <= names
        assert not any(name.startswith("model.decoder.layers.0.") for name in names)
