"""LoRA layouts on GPT-2's fused attention: "reference" gives query, key and value their own rank-r update
(three on the column blocks of `c_attn`), as the reference's separate projections do; "peft" one per layer."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from unfreeze.models import trainable
from unfreeze.models import lora as lora_lib
from unfreeze.models.classifier import GPT2Classifier

D, LAYERS, CLASSES = 32, 2, 2


def tiny_classifier(seed: int = 0, n_embd: int = D, n_layer: int = LAYERS) -> GPT2Classifier:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64, vocab_size=500,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Classifier(GPT2Model(config)).eval()


def ids(batch: int = 3, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def lora_count(d: int, r: int, blocks: int, qkv_blocks: int, classes: int = CLASSES) -> int:
    """Closed form: per block, q/k/v (qkv_blocks updates on c_attn, whose output is 3d wide), the attention's
    c_proj (d -> d), the MLP's c_fc (d -> 4d) and c_proj (4d -> d); the head's LoRA (d -> classes) and the
    head's own weight and bias, which train too (as in the reference)."""
    c_attn = qkv_blocks * (d * r + r * (3 * d // qkv_blocks))
    per_block = c_attn + (d * r + r * d) + (d * r + r * 4 * d) + (4 * d * r + r * d)
    return blocks * per_block + (d * r + r * classes) + (d * classes + classes)


@pytest.mark.parametrize("preset", ["lora", "lora_alternative"])
@pytest.mark.parametrize("layout, qkv_blocks", [("reference", 3), ("peft", 1)])
def test_trainable_count_is_the_closed_form(preset, layout, qkv_blocks):
    rank = 4
    model = tiny_classifier()
    count = trainable.apply_preset(model, preset, lora_rank=rank, lora_alpha=2, seed=0,
                                   lora_layout=layout).trainable_params
    assert count == lora_count(D, rank, LAYERS, qkv_blocks)
    if layout == "reference":  # 3 (d r + r d) on c_attn: 2 d r more per block than one update
        assert count - lora_count(D, rank, LAYERS, 1) == LAYERS * 2 * D * rank


@pytest.mark.parametrize("layout, expected", [("reference", 2_668_066), ("peft", 2_373_154)])
def test_gpt2_small_rank_16_trains_what_the_reference_trains(layout, expected):
    """GPT-2 small's shape (config only, on the meta device: no weights), rank 16, alpha 8: the reference's
    GPTModel with replace_linear_with_lora trains 2,668,066 parameters (DESIGN.md)."""
    with torch.device("meta"):
        model = GPT2Classifier(GPT2Model(GPT2Config()))
    summary = trainable.apply_preset(model, "lora", lora_rank=16, lora_alpha=8, lora_layout=layout)
    assert summary.trainable_params == expected


@pytest.mark.parametrize("preset", ["lora", "lora_alternative"])
def test_with_b_zero_the_reference_layout_equals_the_base_exactly(preset):
    base, adapted = tiny_classifier(), tiny_classifier()
    trainable.apply_preset(adapted, preset, lora_rank=4, lora_alpha=8, seed=0)
    assert any(module.A.abs().sum() > 0 for module in lora_lib.lora_modules(adapted))
    x = ids()
    assert torch.equal(base(x), adapted(x))


def test_three_updates_act_on_query_key_and_value_columns():
    """c_attn's output is [q | k | v]; update i changes block i only, by alpha x A_i B_i."""
    rank, alpha = 3, 2.0
    model = tiny_classifier()
    lora_lib.add_lora(model, rank, alpha, seed=0)
    layer = model.body.h[0].attn.c_attn
    assert isinstance(layer, lora_lib.LoRALayer) and len(layer.updates) == 3
    x = torch.randn(5, D)
    base = layer.base_layer(x)
    generator = torch.Generator().manual_seed(4)
    for i, update in enumerate(layer.updates):
        assert update.A.shape == (D, rank) and update.B.shape == (rank, D)
        assert update.A.abs().max() <= 1 / math.sqrt(rank)  # the reference's kaiming-uniform on (in, r)
        with torch.no_grad():
            update.B.copy_(torch.randn(rank, D, generator=generator))
        out = layer(x)
        expected = base.clone()
        for j, done in enumerate(layer.updates[: i + 1]):
            expected[:, j * D:(j + 1) * D] += alpha * (x @ done.A @ done.B)
        assert torch.allclose(out, expected, atol=1e-5), i
        assert torch.equal(out[:, (i + 1) * D:], base[:, (i + 1) * D:])  # later blocks untouched
    # Every other linear layer has one update.
    assert len(model.body.h[0].mlp.c_fc.updates) == 1 and len(model.head.updates) == 1


def test_reference_lora_alternative_is_the_same_function_as_reference_lora():
    rank, alpha = 4, 2
    branch, merged = tiny_classifier(), tiny_classifier()
    lora_lib.add_lora(branch, rank, alpha, seed=0)
    lora_lib.add_merged_lora(merged, rank, alpha, seed=0)
    branch_updates, merged_updates = lora_lib.lora_modules(branch), lora_lib.lora_modules(merged)
    assert len(branch_updates) == len(merged_updates) == LAYERS * 6 + 1
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for one, other in zip(branch_updates, merged_updates):
            assert torch.equal(one.A, other.A)  # same seed, same draws in the same order
            b = torch.randn(one.B.shape, generator=generator) * 0.1
            one.B.copy_(b)
            other.B.copy_(b)
    x = ids()
    assert not torch.allclose(branch(x), tiny_classifier()(x), atol=1e-3)
    assert torch.allclose(branch(x), merged(x), atol=1e-4)


def test_reference_layout_trains_only_lora_and_the_head():
    model = tiny_classifier()
    trainable.apply_preset(model, "lora", lora_rank=2, lora_alpha=2, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        torch.nn.functional.cross_entropy(model(ids(seed=step)), torch.tensor([0, 1, 1])).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    lora = {name for name, _ in model.named_parameters() if name.endswith((".A", ".B"))}
    assert changed == lora | {"head.base_layer.weight", "head.base_layer.bias"}


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="layout"):
        lora_lib.add_lora(tiny_classifier(), 2, 2, layout="fused")
