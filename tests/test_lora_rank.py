"""A LoRA rank larger than the adapted layers' width is refused before any work (issue 22, item 4).

The bound is min(in_features, out_features) of the narrowest adapted layer inside the model's blocks: a
rank-r update A @ B has rank at most that, so a larger r only adds parameters. The classification head,
whose width is the number of classes, is not bounded (the reference gives its 2-output head rank 16).
"""

from __future__ import annotations

import pytest
from pause_helpers import TINY_ARCH, tiny_model
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models import lora
from unfreeze.models.classifier import DecoderClassifier


def gpt2_body(width: int = 32):
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config(n_layer=2, n_embd=width, n_head=2, n_positions=64, vocab_size=300))


def state(model: nn.Module) -> dict:
    return {name: (type(module).__name__, [p.requires_grad for p in module.parameters(recurse=False)])
            for name, module in model.named_modules()}


@pytest.mark.parametrize("layout", lora.LAYOUTS)
@pytest.mark.parametrize("add", [lora.add_lora, lora.add_merged_lora])
def test_the_width_is_allowed_one_more_is_refused_before_the_model_changes(add, layout):
    model = DecoderClassifier(gpt2_body(32), num_classes=2)  # the head is 32 -> 2: not the bound
    before = state(model)
    with pytest.raises(UsageError) as raised:
        add(model, 33, 8.0, layout=layout)
    message = str(raised.value)
    assert message.startswith("--lora_rank 33 exceeds the width of layer body.h.0.attn.c_attn (32 in, 96 out)")
    assert message.endswith("use --lora_rank 32 or less") and "\n" not in message
    assert state(model) == before  # refused before a single adapter went in
    add(model, 32, 8.0, layout=layout)
    assert lora.lora_modules(model)


def test_a_narrow_key_value_projection_sets_the_bound():
    from transformers import LlamaConfig, LlamaModel

    body = LlamaModel(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=1, vocab_size=100, bos_token_id=0, eos_token_id=0))
    with pytest.raises(UsageError, match=r"layer layers\.0\.self_attn\.k_proj \(64 in, 16 out\).*use --x 16 or less"):
        lora.check_rank(body, 17, "--x")
    lora.check_rank(body, 16, "--x")


def test_named_layers_are_bounded_as_given():
    layers = {"wide": nn.Linear(64, 64), "narrow": nn.Linear(64, 8), "norm": nn.LayerNorm(64)}
    with pytest.raises(UsageError, match=r"^lora_rank 9 exceeds the width of layer narrow \(64 in, 8 out\)"):
        lora.check_rank(layers, 9, "lora_rank")
    lora.check_rank(layers, 8, "lora_rank")


def test_sft_lora_r_beyond_the_width_is_refused_by_add_lora():
    model = tiny_model()
    width = TINY_ARCH["n_embd"]
    with pytest.raises(UsageError, match=rf"^lora_rank {width + 1} exceeds the width of layer transformer\.h\.0\.attn"
                                         rf"\.c_attn .*use lora_rank {width} or less"):
        model.add_lora(r=width + 1, alpha=8, dropout=0.0)
    assert not model.has_lora
    model.add_lora(r=width, alpha=8, dropout=0.0)
    assert model.has_lora


def test_classify_checks_it_with_the_structure_before_the_model_is_built():
    """check_structure runs on the meta device while the inputs are checked (tests/test_bad_inputs.py shows
    that the command then writes nothing)."""
    from unfreeze.recipes.classify import model as classify_model
    from unfreeze.recipes.classify.config import ClassifyConfig

    cfg = ClassifyConfig(weights="random", model_config='{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":64}',
                         trainable_layers="lora_alternative", lora_rank=40)
    with pytest.raises(UsageError, match=r"^--lora_rank 40 exceeds the width of layer h\.0\.attn\.c_attn \(32 in"):
        source = classify_model.model_source(cfg)
        classify_model.check_structure(source, classify_model.body_config(source), cfg.trainable_layers, cfg.lora_rank)
