"""The on-disk frozen-prefix cache: exact, reused without a forward pass, never reused across inputs,
and a killed build leaves nothing that reads as complete."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from unfreeze.cache import disk, memory
from unfreeze.errors import UsageError
from unfreeze.models.classifier import GPT2Classifier

CPU = torch.device("cpu")


def tiny(seed=0, n_layer=3, n_embd=32, **kwargs) -> GPT2Classifier:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64, vocab_size=300,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    return GPT2Classifier(GPT2Model(config), pad_token_id=299, **kwargs).eval()


def token_splits(length=12, seed=1, sizes=(10, 5, 6)) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    splits = {}
    for name, n in zip(("train", "validation", "test"), sizes):
        rows = torch.randint(0, 299, (n, length), generator=gen)
        rows[:, -3:] = 299  # padding at the end, as classify pads
        splits[name] = list(rows)
    return splits


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class StageCounter:
    """Counts forward calls of every block (the frozen part's work)."""

    def __init__(self, model):
        self.calls = 0
        for block in model.body.h:
            block.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


@pytest.mark.parametrize("kwargs", [{}, {"token_pos": "flexible"}, {"average": True},
                                    {"causal": False, "token_pos": "first"}, {"n_layer": 4, "n_embd": 48}])
def test_stored_values_equal_the_in_memory_cache_and_the_uncached_path(tmp_path, kwargs):
    model = frozen(tiny(**kwargs))
    tokens = token_splits()
    cache, built = disk.get_or_build(model, tokens, tmp_path, [2, 3], "fp32", CPU, batch_size=4)
    assert built and cache.boundaries == [2, 3]
    for start in (2, 3):
        plan = memory.CachePlan(start, False, "test")
        in_ram = memory.build_cache(model, plan, tokens, CPU, 4, None)
        for split, rows in tokens.items():
            index = list(range(len(rows)))
            stored, in_memory = cache.hidden(split, start, index), torch.stack(in_ram.splits[split])
            # The store keeps every position a pooling may read (GPT-2's reference padding: all 12), the in-memory
            # cache those its pooling reads (`needed_length`: 9 of 12 for flexible pooling). Where they are the same
            # positions, the same batches: the same bits; else the same function of a longer batch (float rounding).
            assert stored.shape[1] == 12 and stored.abs().sum(-1).gt(0).all()
            ids = torch.stack(rows)
            ids = ids[:, :model.needed_length(ids)]  # as every reader runs them (training.loop.ClassifierInputs)
            resumed = model.head(model.pooled_features(stored[:, :ids.shape[1]], start, ids))
            if in_memory.shape[1] == 12:
                assert torch.equal(stored, in_memory)
                assert torch.equal(resumed, model(ids))  # the uncached path, bit for bit
            else:
                torch.testing.assert_close(stored[:, :in_memory.shape[1]], in_memory, rtol=0, atol=1e-6)
                torch.testing.assert_close(resumed, model(ids), rtol=0, atol=1e-6)
    pooled_plan = memory.CachePlan(model.final_stage + 1, True, "test")
    pooled = memory.build_cache(model, pooled_plan, tokens, CPU, 4, None)
    for split in tokens:
        assert torch.equal(cache.pooled(split, model.final_stage + 1), torch.stack(pooled.splits[split]))
        ids = torch.stack(tokens[split])
        assert torch.equal(cache.pooled(split, 1), model.pool(model.embed(ids), ids))  # every boundary is pooled


def test_bf16_cache_equals_the_in_memory_bf16_cache(tmp_path):
    model, tokens = frozen(tiny()), token_splits()
    cache, _ = disk.get_or_build(model, tokens, tmp_path, [3], "bf16", CPU, batch_size=4)
    in_ram = memory.build_cache(model, memory.CachePlan(3, False, "t", torch.bfloat16),
                                       tokens, CPU, 4, torch.bfloat16)
    assert cache.dtype == torch.bfloat16
    assert torch.equal(cache.hidden("train", 3, range(10)), torch.stack(in_ram.splits["train"]))


def test_a_second_run_reuses_the_cache_without_a_forward_pass(tmp_path):
    tokens = token_splits()
    first = frozen(tiny())
    counter = StageCounter(first)
    _, built = disk.get_or_build(first, tokens, tmp_path, [2], "fp32", CPU)
    assert built and counter.calls > 0
    second = frozen(tiny())  # a fresh model with the same weights: what a later run builds
    counter = StageCounter(second)
    cache, built = disk.get_or_build(second, tokens, tmp_path, [2], "fp32", CPU)
    assert not built and counter.calls == 0
    assert cache.hidden("test", 2, [0]).shape == (1, 12, 32)
    # A subset of the stored boundaries is reused too; a boundary not stored means a rebuild.
    assert not disk.get_or_build(second, tokens, tmp_path, [], "fp32", CPU)[1]
    assert disk.get_or_build(second, tokens, tmp_path, [3], "fp32", CPU)[1]


@pytest.mark.parametrize("change", ["weights", "data", "context_length", "causal_mask", "precision"])
def test_a_cache_of_other_inputs_is_never_reused(tmp_path, change):
    tokens = token_splits()
    disk.get_or_build(frozen(tiny()), tokens, tmp_path, [2], "fp32", CPU)
    model, precision = frozen(tiny()), "fp32"
    if change == "weights":
        model = frozen(tiny(seed=1))
    elif change == "data":
        tokens["test"][0] = tokens["test"][0].clone()
        tokens["test"][0][0] = (tokens["test"][0][0] + 1) % 299
    elif change == "context_length":
        tokens = {split: [r[:-1] for r in rows] for split, rows in tokens.items()}
    elif change == "causal_mask":
        model = frozen(tiny(causal=False))
    else:
        precision = "bf16"
    counter = StageCounter(model)
    _, built = disk.get_or_build(model, tokens, tmp_path, [2], precision, CPU)
    assert built and counter.calls > 0
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(disk, "_write_split", fail)
    with pytest.raises(RuntimeError):
        disk.get_or_build(frozen(tiny()), token_splits(), tmp_path, [2], "fp32", CPU)
    assert list(tmp_path.iterdir()) == []


KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    from test_suggest_cache import frozen, tiny, token_splits
    from unfreeze.cache import disk

    real = disk._write_split
    calls = []
    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the train and validation splits are on disk, meta.json is not
            os.kill(os.getpid(), signal.SIGKILL)
    disk._write_split = write_then_die
    disk.get_or_build(frozen(tiny()), token_splits(), {folder!r}, [2], "fp32", torch.device("cpu"))
""")


def test_a_killed_build_is_never_read_as_complete(tmp_path):
    script = KILLED_BUILD.format(tests=os.path.dirname(__file__), folder=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and ".tmp-" in leftovers[0].name
    model, tokens = frozen(tiny()), token_splits()
    key = disk.cache_key(model, tokens, "fp32", CPU)
    assert disk.open_cache(tmp_path, key) is None
    counter = StageCounter(model)
    cache, built = disk.get_or_build(model, tokens, tmp_path, [2], "fp32", CPU)
    assert built and counter.calls > 0 and cache.meta["complete"]
    assert [p.name for p in tmp_path.iterdir()] == [key]  # the dead build's folder is gone


def test_disk_budget_drops_hidden_boundaries_latest_kept_and_refuses_when_pooled_cannot_fit():
    assert disk.fit_disk_budget(100, 50, [2, 3, 4], 210) == [3, 4]
    assert disk.fit_disk_budget(100, 50, [2, 3, 4], 100) == []
    with pytest.raises(UsageError, match="--cache_budget_gb"):
        disk.fit_disk_budget(100, 50, [2], 99)


def test_over_budget_boundaries_are_not_stored(tmp_path):
    model, tokens = frozen(tiny()), token_splits()
    pooled, hidden = disk.estimate_bytes({"a": 21}, 12, 32, model.final_stage + 1, [2, 3], torch.float32)
    cache, _ = disk.get_or_build(model, tokens, tmp_path, [2, 3], "fp32", CPU, budget_bytes=pooled + hidden)
    assert cache.boundaries == [3]
    with pytest.raises(KeyError):
        cache.hidden("train", 2, [0])
    logging.getLogger(__name__).info("sizes %s", cache.nbytes())


# --- masked, variable-length models (Llama, Qwen2, GPT-NeoX): right padding under an attention mask -----


def masked_model(arch: str, seed: int = 0):
    from test_architectures import make_model

    return frozen(make_model(arch, seed=seed))


def ragged_tokens(seed=3, length=11, sizes=(9, 5, 6), pad=0) -> dict[str, list[torch.Tensor]]:
    """Rows of different real lengths, right-padded with `pad` to one length (as classify pads)."""
    gen = torch.Generator().manual_seed(seed)
    splits = {}
    for name, n in zip(("train", "validation", "test"), sizes):
        rows = torch.randint(1, 97, (n, length), generator=gen)
        for row in rows:
            row[int(torch.randint(1, length + 1, (1,), generator=gen)):] = pad
        splits[name] = list(rows)
    return splits


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_disk_cache_equals_memory_cache_and_uncached_on_every_architecture(tmp_path, arch):
    """Disk cache = in-memory cache (bit for bit, stored real positions) = the uncached path, through the
    forward that candidates and classify train with (each batch cut to its longest real token)."""
    from unfreeze.training.loop import ClassifierInputs

    model = masked_model(arch)
    pad = model.pad_token_id
    tokens = ragged_tokens(pad=pad) if arch != "gpt2" else token_splits()
    final = model.final_stage
    cache, built = disk.get_or_build(model, tokens, tmp_path, [2, 3], "fp32", CPU, batch_size=4)
    assert built
    for start in (2, 3, final + 1):
        kind = "pooled" if start == final + 1 else "hidden"
        in_ram = memory.build_cache(model, memory.CachePlan(start, kind == "pooled", "t"), tokens, CPU, 4, None)
        for split, rows in tokens.items():
            index = list(range(len(rows)))
            if kind == "pooled":
                assert torch.equal(cache.pooled(split, start), torch.stack(in_ram.splits[split]))
            else:
                stored = cache.hidden(split, start, index)
                for i, row in enumerate(in_ram.splits[split]):  # the real positions, zeros after them
                    assert torch.equal(stored[i, :len(row)], row) and not stored[i, len(row):].any()
            for batch in (torch.tensor(index[:4]), torch.tensor(index[-3:])):
                on_disk = ClassifierInputs(model, tokens, cache.reader(start), CPU, None)(split, batch)
                in_memory = ClassifierInputs(model, tokens, in_ram, CPU, None)(split, batch)
                uncached = ClassifierInputs(model, tokens, None, CPU, None)(split, batch)
                assert torch.equal(on_disk, in_memory), (arch, start, split)
                assert torch.allclose(on_disk, uncached, atol=1e-5), (arch, start, (on_disk - uncached).abs().max())


def test_masked_caches_of_other_padding_semantics_are_never_shared(tmp_path):
    tokens = ragged_tokens()
    llama = masked_model("llama")
    disk.get_or_build(llama, tokens, tmp_path, [2], "fp32", CPU)
    assert not disk.get_or_build(masked_model("llama"), tokens, tmp_path, [2], "fp32", CPU)[1]
    other = masked_model("llama")
    other.reference_padding = True  # the same weights and tokens, read without a mask: other values
    assert disk.get_or_build(other, tokens, tmp_path, [2], "fp32", CPU)[1]
