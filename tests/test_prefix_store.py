"""The shared store's key holds no pooling: classify runs that differ only in pooling share one hidden-state build
(counted), and a build for a missing boundary starts from the latest boundary already stored (the same bits)."""

from __future__ import annotations

import json

import pytest
import torch

from test_architectures import make_model
from test_shared_cache import FrozenBlockCalls, cache_folders, config
from test_suggest_cache import StageCounter, frozen, ragged_tokens, tiny, token_splits
from unfreeze.cache import disk, memory
from unfreeze.recipes.classify.recipe import run as run_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_poolings_share_one_hidden_state_build(tmp_path, arch):
    """last, flexible, mean, first: one build of the hidden states; each pooling reads them cut to its positions."""
    tokens = ragged_tokens() if arch == "llama" else token_splits()
    builds, folders, starts = 0, set(), []
    for pooling in ({}, {"token_pos": "flexible"}, {"average": True}, {"token_pos": "first"}):
        model = frozen(make_model(arch, **pooling) if arch == "llama" else tiny(**pooling))
        calls = []
        for block in model.blocks:
            block.register_forward_hook(lambda *_: calls.append(1))
        cache, built = disk.get_or_build(model, tokens, tmp_path, [2], "fp32", CPU, batch_size=4, pooled=None)
        builds += built
        folders.add(cache.folder.name)
        assert bool(calls) == built  # a run that reads the store runs no block
        in_ram = memory.build_cache(model, memory.CachePlan(2, False, "t"), tokens, CPU, 4, None)
        for split, rows in in_ram.splits.items():
            stored = cache.hidden(split, 2, range(len(rows)))
            for i, row in enumerate(rows):  # the positions this pooling reads: the in-memory cache's values
                torch.testing.assert_close(stored[i, :len(row)], row, rtol=0, atol=1e-6)
        starts.append(built)
    assert builds == 1 and len(folders) == 1 and starts == [True, False, False, False]


def test_each_pooling_adds_only_its_pooled_vectors(tmp_path):
    tokens = token_splits()
    disk.get_or_build(frozen(tiny()), tokens, tmp_path, [3], "fp32", CPU, batch_size=4, pooled=None)
    for pooling, start, blocks in (({}, 3, 0), ({"average": True}, 3, 1), ({"token_pos": "first"}, 1, 2)):
        model = frozen(tiny(**pooling))
        counter = StageCounter(model)
        cache, built = disk.get_or_build(model, tokens, tmp_path, [], "fp32", CPU, batch_size=4, pooled="final")
        entry = json.loads((cache.folder / cache.pooled_name / "entry.json").read_text())
        # last and mean read every stored position: they start from the stored input of the last block (last runs
        # it at the pooled position only, mean in full); first reads position 0 only, in its own batches from the
        # embeddings (blocks 0 and 1 in full, the last at position 0)
        batches = sum(len(memory.build_batches(model, rows, 4)) for rows in tokens.values())
        assert built and entry["start"] == start and counter.calls == blocks * batches
        pooled = memory.build_cache(model, memory.CachePlan(model.final_stage + 1, True, "t"), tokens, CPU, 4, None)
        for split in tokens:  # the in-memory pooled features, bit for bit
            assert torch.equal(cache.pooled(split, model.final_stage + 1), torch.stack(pooled.splits[split]))
    assert len(cache_folders(tmp_path)) == 1 and len(list(cache.folder.glob("pooled-*"))) == 3


def test_a_missing_boundary_is_built_from_the_latest_one_stored(tmp_path):
    tokens = token_splits()
    disk.get_or_build(frozen(tiny(n_layer=4)), tokens, tmp_path / "a", [2], "fp32", CPU, batch_size=4, pooled=None)
    model = frozen(tiny(n_layer=4))
    counter = StageCounter(model)
    cache, built = disk.get_or_build(model, tokens, tmp_path / "a", [4], "fp32", CPU, batch_size=4, pooled=None)
    batches = len(cache.meta["sizes"]) * -(-10 // 4)  # upper bound on batches per split: 10, 5, 6 rows by 4
    entry = json.loads((cache.folder / "hidden-4" / "entry.json").read_text())
    assert built and cache.boundaries == [2, 4] and entry["start"] == 2
    assert 0 < counter.calls <= 2 * batches  # blocks 2 and 3 (of 4) per batch, never blocks 0 and 1
    fresh, _ = disk.get_or_build(frozen(tiny(n_layer=4)), tokens, tmp_path / "b", [4], "fp32", CPU, batch_size=4,
                                 pooled=None)
    for split, rows in tokens.items():  # the same bits as a build from the embeddings
        assert torch.equal(cache.hidden(split, 4, range(len(rows))), fresh.hidden(split, 4, range(len(rows))))


def test_bf16_stores_are_never_continued(tmp_path):
    tokens = token_splits()
    disk.get_or_build(frozen(tiny()), tokens, tmp_path, [2], "bf16", CPU, batch_size=4, pooled=None)
    cache, built = disk.get_or_build(frozen(tiny()), tokens, tmp_path, [3], "bf16", CPU, batch_size=4, pooled=None)
    assert built and json.loads((cache.folder / "hidden-3" / "entry.json").read_text())["start"] == 1


def test_classify_rows_of_three_poolings_build_once(spam_csv_dir, byte_tokenizer_dir, tmp_path, device, tolerance):
    """The sweep rows reference (last), first_token and mean_pooling at last_block: one build, then reads."""
    features = str(tmp_path / "features")
    built = []
    for name, pooling in (("last", {}), ("first", {"trainable_token_pos": "first"}),
                          ("mean", {"average_embeddings": True})):
        with FrozenBlockCalls() as calls:
            shared = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, name, device,
                                       feature_cache_dir=features, **pooling))
        memory_run = run_config(config(spam_csv_dir, byte_tokenizer_dir, tmp_path, f"{name}-memory", device, **pooling))
        built.append((shared["cache"]["shared"]["built"], calls.calls > 0))
        # GPT-2's last and mean read every stored position: the in-memory bits; first reads position 0 of them
        tol = tolerance() if name != "first" else tolerance(cpu=1e-6)
        tol.assert_close({k: shared[k] for k in ("test_acc", "history")},
                         {k: memory_run[k] for k in ("test_acc", "history")}, name)
    assert built == [(True, True), (False, False), (False, False)]
    assert len(cache_folders(tmp_path / "features")) == 1
