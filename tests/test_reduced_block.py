"""The last block computed at the pooled position only (`pooled_features`) is the full block's function.

For every pooling and every cacheable preset, on a tiny GPT-2 (reference padding, no mask) and tiny
Llama/Qwen2 (padding mask, rotary, grouped-query attention): logits and the gradients of every trainable
tensor agree with the full path (`reduce_last_block = False`) within 1e-5 (gradients: of their largest
entry, fp32 round-off), uncached and from the cache.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from test_architectures import make_model, padded_batch
from unfreeze.cache import memory
from unfreeze.cache.policy import CacheRequest
from unfreeze.models import reduced_block, trainable
from unfreeze.training.loop import ClassifierInputs

POOLINGS = {"last": {}, "first": {"token_pos": "first"}, "flexible": {"token_pos": "flexible"},
            "mean": {"average": True}}
PRESETS = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "bias")


def _logits_and_grads(model, forward, indices, labels):
    model.zero_grad(set_to_none=True)
    logits = forward("train", indices)
    F.cross_entropy(logits, labels).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return logits.detach(), grads


def _compare(model, forward, indices, labels):
    model.reduce_last_block = True
    reduced = _logits_and_grads(model, forward, indices, labels)
    model.reduce_last_block = False
    full = _logits_and_grads(model, forward, indices, labels)
    torch.testing.assert_close(reduced[0], full[0], atol=1e-5, rtol=0)
    assert reduced[1].keys() == full[1].keys() and full[1]
    for name in full[1]:
        # fp32 round-off grows with the gradient's size (LoRA B's reach ~20 here): 1e-5 of its largest entry
        scale = max(1.0, full[1][name].abs().max().item())
        torch.testing.assert_close(reduced[1][name], full[1][name], atol=1e-5 * scale, rtol=0, msg=name)


def _setup(arch, preset, pooling, cached):
    model = make_model(arch, seed=3, **POOLINGS[pooling])
    trainable.apply_preset(model, preset, lora_rank=2, lora_alpha=4, seed=0)
    with torch.no_grad():  # B = 0 would hide a wrong LoRA branch; random heads/updates make every path count
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.train()  # dropout is 0: training mode is the path the loss takes
    ids = padded_batch(arch, lengths=(10, 6, 3, 10))
    tokens = {"train": list(ids)}
    cache = None
    if cached:
        request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
        cache, info, _ = memory.prepare(model, tokens, torch.device("cpu"), None, request, 2,
                                               logging.getLogger("test"))
        assert cache is not None, info
    return model, ClassifierInputs(model, tokens, cache, torch.device("cpu"), None)


@pytest.mark.parametrize("arch,preset", [(arch, preset) for preset in PRESETS for arch in ("gpt2", "llama", "qwen2")
                                         if (arch, preset) != ("llama", "bias")])  # Llama has no bias terms
@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_reduced_last_block_equals_the_full_block(arch, pooling, preset):
    cacheable = preset in ("last_layer", "last_block", "last_two_blocks")
    for cached in (False, True) if cacheable else (False,):
        model, forward = _setup(arch, preset, pooling, cached)
        _compare(model, forward, torch.arange(4), torch.tensor([0, 1, 2, 1]))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_the_reduction_is_taken_for_one_position_pooling(arch, monkeypatch):
    """Guards the speed: the one-position path runs (not a silent fallback), and only once per forward."""
    calls = []
    real = reduced_block.reducer_for

    def counting(block, kind):
        reducer = real(block, kind)
        calls.append(reducer is not None)
        return reducer

    monkeypatch.setattr("unfreeze.models.classifier.reducer_for", counting)
    model = make_model(arch)
    model(padded_batch(arch))
    assert calls == [True]
    calls.clear()
    make_model(arch, average=True)(padded_batch(arch))
    assert calls == []  # mean pooling reads every position: full path


def test_gpt_neox_falls_back_to_the_full_block():
    model = make_model("gpt_neox")
    assert reduced_block.reducer_for(model.blocks[-1], "full_attention") is None
    ids = padded_batch("gpt_neox")
    reduced = model(ids)
    model.reduce_last_block = False
    torch.testing.assert_close(reduced, model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("preset,cached", [("last_block", True), ("last_layer", True), ("lora", False)])
def test_bf16_paths_keep_fp32_master_copies(arch, preset, cached):
    """Under --precision bf16 (autocast, bf16 cache) the trainable tensors, their gradients and AdamW's
    moments stay fp32, and the update reaches them: bf16 is the compute, never the stored weights."""
    model = make_model(arch, seed=3)
    trainable.apply_preset(model, preset, lora_rank=2, lora_alpha=4, seed=0)
    model.train()
    tokens = {"train": list(padded_batch(arch, lengths=(10, 6, 3, 10)))}
    cache = None
    if cached:
        request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
        cache, info, _ = memory.prepare(model, tokens, torch.device("cpu"), torch.bfloat16, request, 2,
                                               logging.getLogger("test"))
        assert cache is not None and info["dtype"] == "bfloat16", info
    forward = ClassifierInputs(model, tokens, cache, torch.device("cpu"), torch.bfloat16)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2, fused=True)
    F.cross_entropy(forward("train", torch.arange(4)), torch.tensor([0, 1, 2, 1])).backward()
    optimizer.step()
    assert params and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params.values())
    moments = [t for state in optimizer.state.values() for k, t in state.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert any(not torch.equal(before[name], p) for name, p in params.items())
