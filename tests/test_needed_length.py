"""Only the positions the pooled output depends on run (`DecoderClassifier.needed_length`), and that is exact.

Under a causal mask nothing after the furthest pooled position reaches it, so `first` pooling runs one
position and `flexible` runs up to the longest text, uncached, in the cache build and from the cache; the
logits equal those of the whole padded input. Tiny GPT-2 (reference padding, no mask) and Llama (mask).
"""

import logging

import pytest
import torch

from test_architectures import PAD, make_model, padded_batch
from unfreeze.cache import memory
from unfreeze.cache.policy import CacheRequest
from unfreeze.models import trainable
from unfreeze.models.classifier import PAD_TOKEN_ID
from unfreeze.training.loop import ClassifierInputs

POOLINGS = {"last": {}, "first": {"token_pos": "first"}, "flexible": {"token_pos": "flexible"},
            "mean": {"average": True}}
# ids below: real lengths 7, 6, 3, then padding to 12 positions
NEEDED = {("gpt2", True): {"last": 12, "first": 1, "flexible": 7, "mean": 12},
          ("gpt2", False): dict.fromkeys(POOLINGS, 12),
          ("llama", True): {"last": 7, "first": 1, "flexible": 7, "mean": 7},
          ("llama", False): dict.fromkeys(POOLINGS, 7)}


def _ids(arch: str) -> torch.Tensor:
    ids = padded_batch(arch, lengths=(7, 6, 3))
    pad = torch.full((3, 5), PAD_TOKEN_ID if arch == "gpt2" else PAD)
    return torch.cat([ids, pad], dim=1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_positions_after_the_needed_ones_change_nothing(arch, causal, pooling):
    model = make_model(arch, seed=3, causal=causal, **POOLINGS[pooling])
    ids = _ids(arch)
    needed = model.needed_length(ids)
    assert needed == NEEDED[(arch, causal)][pooling]
    with torch.no_grad():
        whole = model(ids)
        torch.testing.assert_close(model(ids[:, :needed]), whole, atol=1e-5, rtol=0)
        if needed > 1:  # and the count is tight: one position fewer changes the logits
            assert not torch.allclose(model(ids[:, :needed - 1]), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("preset", ["last_layer", "last_block"])
def test_first_token_cache_stores_one_position_and_equals_the_whole_input(arch, preset):
    model = make_model(arch, seed=3, token_pos="first")
    trainable.apply_preset(model, preset)
    ids = _ids(arch)
    tokens = {"train": list(ids)}
    request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
    cache, info, _ = memory.prepare(model, tokens, torch.device("cpu"), None, request, 2,
                                           logging.getLogger("test"))
    assert info["tokens"] == 3  # one position per example was computed
    if preset == "last_block":
        assert [len(row) for row in cache.splits["train"]] == [1, 1, 1]
    cached = ClassifierInputs(model, tokens, cache, torch.device("cpu"), None)
    uncached = ClassifierInputs(model, tokens, None, torch.device("cpu"), None)
    with torch.no_grad():
        whole = model(ids)
        indices = torch.arange(3)
        torch.testing.assert_close(cached("train", indices), whole, atol=1e-5, rtol=0)
        torch.testing.assert_close(uncached("train", indices), whole, atol=1e-5, rtol=0)
