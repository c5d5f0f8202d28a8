"""The model, the presets and LoRA: each flag's effect, asserted on a 2-layer GPT-2 (on the test device:
the equivalences hold bit for bit, or within the stated tolerance, on the CPU, and within CUDA's on a GPU)."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from unfreeze.cache.memory import frozen_prefix_stages
from unfreeze.models import lora as lora_lib
from unfreeze.models import trainable
from unfreeze.models.classifier import PAD_TOKEN_ID, GPT2Classifier

N_EMBD, N_LAYER = 32, 2


def tiny_classifier(seed=0, device="cpu", **kwargs) -> GPT2Classifier:
    """Built on the CPU from `seed` (the same weights on every device), then moved to `device`."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=N_LAYER, n_embd=N_EMBD, n_head=2, n_positions=64, vocab_size=50257,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    model = GPT2Classifier(GPT2Model(config), **kwargs)
    return model.to(device).eval()


def ids(batch=3, length=10, seed=1, device="cpu"):
    return torch.randint(0, 50000, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def block_params(model, index):
    return {f"body.h.{index}.{name}" for name, _ in model.body.h[index].named_parameters()}


HEAD = {"head.weight", "head.bias"}
LN_F = {"body.ln_f.weight", "body.ln_f.bias"}


@pytest.mark.parametrize("preset", ["last_layer", "last_block", "last_two_blocks", "all"])
def test_presets_train_exactly_the_named_tensors(preset):
    model = tiny_classifier()
    trainable.apply_preset(model, preset)
    names = set(trainable.trainable_summary(model).tensors)
    expected = {
        "last_layer": HEAD,
        "last_block": HEAD | LN_F | block_params(model, 1),
        "last_two_blocks": HEAD | LN_F | block_params(model, 1) | block_params(model, 0),
        "all": {name for name, _ in model.named_parameters()},
    }[preset]
    assert names == expected
    # Counts: one block of GPT-2 has 12 d^2 + 13 d parameters; LayerNorm 2d; the head 2d + 2.
    d = N_EMBD
    block, head = 12 * d * d + 13 * d, 2 * d + 2
    count = trainable.trainable_summary(model).trainable_params
    assert count == {"last_layer": head, "last_block": head + 2 * d + block,
                     "last_two_blocks": head + 2 * d + 2 * block,
                     "all": sum(p.numel() for p in model.parameters())}[preset]


@pytest.mark.parametrize("preset", ["last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative"])
def test_optimizer_steps_change_exactly_the_trainable_tensors(preset, device):
    model = tiny_classifier()
    trainable.apply_preset(model, preset, lora_rank=4, lora_alpha=2, seed=0)
    model.to(device)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        loss = torch.nn.functional.cross_entropy(model(ids(seed=step, device=device)),
                                               torch.tensor([0, 1, 1], device=device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trainable_names = set(trainable.trainable_summary(model).tensors)
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trainable_names), f"{preset}: {name} changed={changed}"


def test_lora_with_b_zero_equals_the_base_model(device, tolerance):
    base = tiny_classifier(device=device)
    adapted = tiny_classifier()
    trainable.apply_preset(adapted, "lora", lora_rank=4, lora_alpha=8, seed=0)
    adapted.to(device)
    x = ids(device=device)
    tol = tolerance(cpu=1e-6, cpu_rtol=1e-5)  # the CPU's: torch.allclose(atol=1e-6)
    assert torch.allclose(base(x), adapted(x), atol=tol.atol, rtol=tol.rtol), tol.reason


def test_lora_scaling_is_the_references_alpha_times_x_a_b(device, tolerance):
    """Every adapted layer computes W x + b + alpha * x @ A @ B (A: in x r, B: r x out)."""
    rank, alpha = 4, 3
    model = tiny_classifier()
    lora_lib.add_lora(model, rank, alpha, seed=0, layout="peft")
    model.to(device)
    tol = tolerance(cpu=1e-5, cpu_rtol=1e-5)  # the CPU's: torch.allclose(atol=1e-5)
    for name in lora_lib.linear_layers(tiny_classifier()):
        layer = model.get_submodule(name)
        a = layer.lora_A["default"].weight.detach().T  # (in, r)
        b = torch.randn(rank, a.shape[0] if False else layer.lora_B["default"].weight.shape[0]).to(device)
        with torch.no_grad():
            layer.lora_B["default"].weight.copy_(b.T)
        x = torch.randn(5, a.shape[0]).to(device)
        base_out = layer.base_layer(x)
        want = base_out + alpha * (x @ a @ b)
        assert torch.allclose(layer(x), want, atol=tol.atol, rtol=tol.rtol), (name, tol.reason)
        # The reference draws A from kaiming_uniform on an (in, r) tensor: U(-1/sqrt(r), 1/sqrt(r)).
        bound = 1 / math.sqrt(rank)
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound


def test_lora_alternative_is_the_same_function_as_lora(device, tolerance):
    rank, alpha = 4, 2
    peft_model, merged_model = tiny_classifier(), tiny_classifier()
    lora_lib.add_lora(peft_model, rank, alpha, seed=0, layout="peft")
    lora_lib.add_merged_lora(merged_model, rank, alpha, seed=0, layout="peft")
    peft_model.to(device)
    merged_model.to(device)
    generator = torch.Generator().manual_seed(3)
    for name in lora_lib.linear_layers(tiny_classifier()):
        layer = peft_model.get_submodule(name)
        merged = merged_model.get_submodule(name).parametrizations.weight[0].updates[0]
        a = torch.randn(merged.A.shape, generator=generator)
        b = torch.randn(merged.B.shape, generator=generator) * 0.1
        with torch.no_grad():
            merged.A.copy_(a)
            merged.B.copy_(b)
            layer.lora_A["default"].weight.copy_(a.T)
            layer.lora_B["default"].weight.copy_(b.T)
    x = ids(device=device)
    tol = tolerance(cpu=1e-4, cpu_rtol=1e-5)  # the CPU's: torch.allclose(atol=1e-4)
    assert torch.allclose(peft_model(x), merged_model(x), atol=tol.atol, rtol=tol.rtol), tol.reason


def test_lora_presets_also_train_the_head_like_the_reference():
    for preset in ("lora", "lora_alternative"):
        model = tiny_classifier()
        trainable.apply_preset(model, preset, lora_rank=2, lora_alpha=2, seed=0)
        head_params = list(getattr(model.head, "base_layer", model.head).parameters())
        assert all(p.requires_grad for p in head_params)
        assert not model.body.wte.weight.requires_grad
        assert len(trainable.trainable_summary(model).tensors) > 2


def test_flexible_equals_last_on_unpadded_input_and_picks_last_real_token(device, tolerance):
    last = tiny_classifier(token_pos="last", device=device)
    flexible = tiny_classifier(token_pos="flexible", device=device)
    x = ids(device=device)
    tolerance().assert_close(last(x), flexible(x))  # the same computation: bit for bit on the CPU
    padded = torch.cat([x[:, :6], torch.full((3, 4), PAD_TOKEN_ID, device=device)], dim=1)
    tol = tolerance(cpu=1e-6, cpu_rtol=1e-5)  # the CPU's: torch.allclose(atol=1e-6)
    assert torch.allclose(flexible(padded), last(x[:, :6]), atol=tol.atol, rtol=tol.rtol), tol.reason
    assert not torch.allclose(last(padded), last(x[:, :6]), atol=1e-4)


def test_first_position_and_mean_pooling(device, tolerance):
    first, mean = tiny_classifier(token_pos="first", device=device), tiny_classifier(average=True, device=device)
    x = ids(device=device)
    per_position = first.per_position_logits(x)
    tol = tolerance(cpu=1e-6, cpu_rtol=1e-5)  # the CPU's: torch.allclose(atol=1e-6)
    assert torch.allclose(first(x), per_position[:, 0], atol=tol.atol, rtol=tol.rtol), tol.reason
    # Pool-then-head equals the reference's head-then-mean (the head is affine).
    tol = tolerance(cpu=1e-5, cpu_rtol=1e-5)
    assert torch.allclose(mean(x), per_position.mean(dim=1), atol=tol.atol, rtol=tol.rtol), tol.reason


def test_disabled_causal_mask_lets_the_first_position_see_later_tokens(device, tolerance):
    causal = tiny_classifier(token_pos="first", device=device)
    full = tiny_classifier(token_pos="first", causal=False, device=device)
    x = ids(batch=1, device=device)
    changed = x.clone()
    changed[0, -1] = (x[0, -1] + 1) % 50000
    tolerance().assert_close(causal(x), causal(changed))  # causal: position 0 never sees the last token
    assert not torch.allclose(full(x), full(changed))
    # Sanity: same weights, different masks give different outputs at the first position.
    assert not torch.allclose(causal(x), full(x))


def test_run_stages_from_any_point_equals_the_full_forward(device, tolerance):
    model = tiny_classifier(device=device)
    x = ids(device=device)
    full = model.features(x)
    for stage in range(1, model.final_stage + 1):
        prefix = model.run_stages(model.embed(x), 1, stage)
        tolerance().assert_close(model.run_stages(prefix, stage), full, f"stage {stage}")


def test_frozen_prefix_is_decided_from_the_parameters_each_stage_uses():
    # With LoRA in every block only the embedding lookup is frozen (stage 0).
    expectations = {"last_layer": 4, "last_block": 2, "last_two_blocks": 1, "all": 0, "lora": 1}
    for preset, stages in expectations.items():
        model = tiny_classifier()
        trainable.apply_preset(model, preset, lora_rank=2, lora_alpha=2, seed=0)
        assert frozen_prefix_stages(model.stage_modules()) == stages, preset
    model = tiny_classifier()
    trainable.apply_preset(model, "last_layer")
    model.body.h[0].attn.attn_dropout.p = 0.1  # active dropout makes the prefix non-deterministic
    assert frozen_prefix_stages(model.stage_modules()) == 1


def test_gpt2_gets_the_fused_gelu_and_the_same_function(device, tolerance):
    """classify swaps GPT-2's composed `gelu_new` for the fused kernel of the same formula (profile_all.py)."""
    from unfreeze.models import model_config
    from unfreeze.recipes.classify.config import ClassifyConfig
    from unfreeze.recipes.classify.model import body_config, model_source

    assert body_config(model_source(ClassifyConfig(weights="random"))).activation_function == "gelu_pytorch_tanh"
    shape = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    composed_config, fused_config = GPT2Config(**shape), GPT2Config(**shape)
    model_config.fused_activation(fused_config)
    assert composed_config.activation_function == "gelu_new" and fused_config.activation_function == "gelu_pytorch_tanh"
    torch.manual_seed(0)
    composed = GPT2Model(composed_config).eval()
    fused = GPT2Model(fused_config).eval()
    fused.load_state_dict(composed.state_dict())
    fused.to(device)
    composed.to(device)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        tolerance(cpu=1e-5).assert_close(fused(ids).last_hidden_state, composed(ids).last_hidden_state)
