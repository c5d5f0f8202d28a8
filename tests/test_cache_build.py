"""The cache build's own batching (by tokens, sorted by real length) and its throughput entry."""

import logging

import torch

from test_architectures import make_model, padded_batch
from unfreeze.cache import frozen_prefix
from unfreeze.cache.policy import CacheRequest
from unfreeze.models import trainable


def test_masked_batches_are_sorted_by_length_and_capped_by_tokens(monkeypatch):
    monkeypatch.setattr(frozen_prefix, "BUILD_TOKENS_PER_BATCH", 20)
    model = make_model("llama")
    rows = list(padded_batch("llama", lengths=(10, 2, 6, 3, 9, 4, 2, 7)))
    batches = frozen_prefix._batches(model, rows, 1)
    lengths = [frozen_prefix._real_length(model, rows[i]) for batch in batches for i in batch]
    assert lengths == sorted(lengths) and sorted(i for b in batches for i in b) == list(range(8))
    assert all(len(b) * max(frozen_prefix._real_length(model, rows[i]) for i in b) <= 20 for b in batches)
    assert len(batches) < 8  # short rows share a batch


def test_reference_padding_batches_ignore_the_training_batch_size():
    model = make_model("gpt2")
    rows = list(padded_batch("gpt2", lengths=(10,) * 40))
    assert [len(b) for b in frozen_prefix._batches(model, rows, 2)] == [40]  # 400 tokens: one batch


def test_cache_entry_reports_throughput_and_the_matmul_peak(monkeypatch):
    monkeypatch.setattr(frozen_prefix, "BUILD_TOKENS_PER_BATCH", 1)  # one row per batch: no padding computed
    model = make_model("llama")
    trainable.apply_preset(model, "last_block")
    tokens = {"train": list(padded_batch("llama")), "validation": list(padded_batch("llama", seed=2))}
    request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
    cache, info, _ = frozen_prefix.prepare(model, tokens, torch.device("cpu"), None, request, 1,
                                           logging.getLogger("test"))
    assert info["tokens"] == 2 * (10 + 6 + 3)  # the computed positions: here the real tokens
    assert info["examples_per_s"] > 0 and info["gflops"] > 0 and info["matmul_peak_gflops"] > 0
    assert info["fraction_of_peak"] is not None and info["fraction_of_peak"] <= 1.5


def test_bf16_warning_names_both_speeds_only_when_bf16_is_slower(monkeypatch):
    speeds = {torch.float32: 60.0, torch.bfloat16: 0.9}
    monkeypatch.setattr(frozen_prefix, "matmul_peak_gflops", lambda dtype, device, **_: speeds[dtype])
    line = frozen_prefix.slow_bf16_warning(torch.device("cpu"))
    assert "0.9 GFLOP/s against 60.0 for fp32" in line and "--precision fp32" in line
    assert frozen_prefix.slow_bf16_warning(torch.device("cuda")) is None  # GPUs: bf16 is the fast path
    speeds[torch.bfloat16] = 140.0  # a CPU with AMX or AVX512-BF16
    assert frozen_prefix.slow_bf16_warning(torch.device("cpu")) is None
