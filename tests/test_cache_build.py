"""The cache build's own batching (by tokens, sorted by real length) and its throughput entry."""

import logging

import torch

from test_architectures import make_model, padded_batch
from unfreeze.cache import memory
from unfreeze.cache.policy import CacheRequest
from unfreeze.models import trainable


def test_masked_batches_are_sorted_by_length_and_capped_by_tokens(monkeypatch):
    monkeypatch.setattr(memory, "BUILD_TOKENS_PER_BATCH", 20)
    model = make_model("llama")
    rows = list(padded_batch("llama", lengths=(10, 2, 6, 3, 9, 4, 2, 7)))
    batches = memory.build_batches(model, rows, 1)
    lengths = [memory._real_length(model, rows[i]) for batch in batches for i in batch]
    assert lengths == sorted(lengths) and sorted(i for b in batches for i in b) == list(range(8))
    assert all(len(b) * max(memory._real_length(model, rows[i]) for i in b) <= 20 for b in batches)
    assert len(batches) < 8  # short rows share a batch


def test_reference_padding_batches_ignore_the_training_batch_size():
    model = make_model("gpt2")
    rows = list(padded_batch("gpt2", lengths=(10,) * 40))
    assert [len(b) for b in memory.build_batches(model, rows, 2)] == [40]  # 400 tokens: one batch


def test_cache_entry_reports_throughput_and_the_matmul_peak(monkeypatch, device):
    monkeypatch.setattr(memory, "BUILD_TOKENS_PER_BATCH", 1)  # one row per batch: no padding computed
    model = make_model("llama")
    trainable.apply_preset(model, "last_block")
    model.to(device)
    tokens = {"train": list(padded_batch("llama")), "validation": list(padded_batch("llama", seed=2))}
    request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
    cache, info, _ = memory.prepare(model, tokens, device, None, request, 1, logging.getLogger("test"))
    assert info["tokens"] == 2 * (10 + 6 + 3)  # the computed positions: here the real tokens
    assert info["examples_per_s"] > 0 and info["gflops"] > 0 and info["matmul_peak_gflops"] > 0
    assert info["fraction_of_peak"] is not None and info["fraction_of_peak"] <= 1.5


def test_bf16_warning_names_both_speeds_only_when_bf16_is_slower(monkeypatch):
    speeds = {torch.float32: 60.0, torch.bfloat16: 0.9}
    monkeypatch.setattr(memory, "matmul_peak_gflops", lambda dtype, device, **_: speeds[dtype])
    line = memory.slow_bf16_warning(torch.device("cpu"))
    assert "0.9 GFLOP/s against 60.0 for fp32" in line and "--precision fp32" in line
    assert memory.slow_bf16_warning(torch.device("cuda")) is None  # GPUs: bf16 is the fast path
    speeds[torch.bfloat16] = 140.0  # a CPU with AMX or AVX512-BF16
    assert memory.slow_bf16_warning(torch.device("cpu")) is None


def test_repeated_examples_are_computed_once_and_read_the_same_features(device, tolerance):
    model = make_model("gpt2")
    trainable.apply_preset(model, "last_block")
    model.to(device)
    train = list(padded_batch("gpt2", lengths=(10,) * 3))
    validation = list(padded_batch("gpt2", lengths=(10,) * 2, seed=2))
    repeated = {"train": [*train, train[1]], "validation": [validation[0], train[1], validation[1]]}
    plan = memory.plan_cache(model, memory.frozen_prefix_stages(model.stage_modules()), [10] * 7,
                                    model.hidden_size, torch.float32)
    cache = memory.build_cache(model, plan, repeated, device, 1, None)
    assert cache.stats["tokens"] == 5 * 10 and cache.stats["repeated_examples"] == 2  # 5 distinct rows
    assert cache.splits["train"][3] is cache.splits["train"][1] is cache.splits["validation"][1]
    assert cache.nbytes() == 5 * 10 * model.hidden_size * 4
    alone = memory.build_cache(model, plan, {"train": train, "validation": validation}, device, 1, None)
    tol = tolerance(cpu=1e-6)  # the CPU's: assert_close(rtol=0, atol=1e-6)
    for split, order in (("train", [0, 1, 2, 1]), ("validation", [0, None, 1])):
        for got, i in zip(cache.splits[split], order):
            want = alone.splits["train"][1] if i is None else alone.splits[split][i]
            tol.assert_close(got, want, f"{split} {i}")


def test_disk_cache_computes_repeats_once_and_holds_the_in_memory_bits(tmp_path, device, tolerance):
    from unfreeze.cache import disk

    model = make_model("gpt2")
    trainable.apply_preset(model, "last_block")
    model.to(device)
    train = list(padded_batch("gpt2", lengths=(10, 7, 4)))
    tokens = {"train": [*train, train[1]], "validation": [train[2], *padded_batch("gpt2", lengths=(10, 5), seed=2)]}
    start = memory.frozen_prefix_stages(model.stage_modules())
    plan = memory.plan_cache(model, start, [10] * 6, model.hidden_size, torch.float32)
    in_ram = memory.build_cache(model, plan, tokens, device, 2, None)
    stored, built = disk.get_or_build(model, tokens, tmp_path, [plan.start_stage], "fp32", device, batch_size=2)
    assert built
    for split, rows in in_ram.splits.items():
        on_disk = stored.hidden(split, plan.start_stage, list(range(len(rows))))
        for position, row in enumerate(rows):
            tolerance().assert_close(on_disk[position, :len(row)].cpu(), row.cpu(), f"{split} {position}")
    assert torch.equal(stored.hidden("train", plan.start_stage, [3]), stored.hidden("train", plan.start_stage, [1]))
    assert torch.equal(stored.pooled("validation", model.final_stage + 1, [0]),
                       stored.pooled("train", model.final_stage + 1, [2]))
