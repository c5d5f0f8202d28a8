"""The cache package: one budget policy for both recipes, one dropout helper, each recipe's outcome."""

import logging

import pytest
import torch
from transformers import GPT2Config

from pause_helpers import tiny_model
from unfreeze.cache import memory, policy, sft_prefix
from unfreeze.models.dropout import DROPOUT_ATTRIBUTES, active_dropout, set_config_dropout, set_dropout
from unfreeze.data import sft_data
from unfreeze.errors import UsageError
from unfreeze.models.trainable import apply_components, apply_preset

LOG = logging.getLogger("test_cache")
GIB = 2**30


# --- the policy ---------------------------------------------------------------------------------------


def test_budget_policy_keeps_then_halves_then_drops():
    keep = policy.fit_budget(1000, torch.float32, 1000, "--budget", bf16_fallback=True)
    assert (keep.dtype, keep.estimated_bytes, keep.notes) == (torch.float32, 1000, [])
    halved = policy.fit_budget(1000, torch.float32, 600, "--budget", bf16_fallback=True)
    assert (halved.dtype, halved.estimated_bytes) == (torch.bfloat16, 500)
    assert "storing in bf16" in halved.notes[0]
    dropped = policy.fit_budget(1000, torch.float32, 400, "--budget", bf16_fallback=True)
    assert not dropped.fits and dropped.estimated_bytes == 500 and "raise --budget" in dropped.notes[-1]
    # Already bf16: nothing to halve. Without the fallback (sft): straight to off.
    assert not policy.fit_budget(1000, torch.bfloat16, 600, "--budget", bf16_fallback=True).fits
    strict = policy.fit_budget(1000, torch.float32, 600, "budget", bf16_fallback=False)
    assert not strict.fits and strict.estimated_bytes == 1000 and len(strict.notes) == 1


def test_default_budget_is_a_quarter_of_available_memory(device):
    available = policy.available_memory_bytes(device)  # on CUDA: the GPU's free memory
    assert available > 0
    assert abs(policy.budget_bytes(None, device) - available / 4) < 0.05 * available  # free memory moves a little
    assert policy.budget_bytes(0.5, device) == 0.5 * GIB


def test_not_exact_is_an_error_only_when_demanded(caplog):
    request = policy.CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
    with pytest.raises(UsageError, match="^--cache_activations on cannot be exact here: why$"):
        policy.not_exact(request, "why", LOG)
    auto = policy.CacheRequest("auto", None, "--cache_activations on", "--cache_budget_gb")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert policy.not_exact(auto, "why", LOG) == {"kind": "none", "bytes": 0, "reason": "why"}
    assert "activation cache: off (why)" in caplog.text


# --- dropout ------------------------------------------------------------------------------------------


def test_one_dropout_list_sets_and_finds_every_form_of_dropout():
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, attention_dropout=0.3, hidden_dropout_prob=0.2)
    set_config_dropout(config, 0.0)
    assert all(getattr(config, name, 0.0) == 0.0 for name in DROPOUT_ATTRIBUTES)
    assert config.summary_first_dropout == 0.0 and config.n_embd == 8  # only rates change

    class Attention(torch.nn.Module):  # a float rate read by an attention kernel, no nn.Dropout module
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0.0
            self.proj = torch.nn.Linear(4, 4)

    model = torch.nn.Sequential(Attention(), torch.nn.Dropout(0.0), torch.nn.Linear(4, 4))
    assert active_dropout(model) == []
    set_dropout(model, 0.25)
    assert active_dropout(model) == ["0.attention_dropout", "1"]
    assert active_dropout(model, exclude=(model[1],)) == ["0.attention_dropout"]
    set_dropout(model, 0.0)
    assert active_dropout(model) == [] and model[0].attention_dropout == 0.0


def test_classify_config_dropout_goes_through_the_same_list():
    from unfreeze.models.model_config import without_dropout

    config = GPT2Config(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    without_dropout(config)
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop, config.summary_first_dropout) == (0, 0, 0, 0)


# --- each recipe's outcome under the shared policy -----------------------------------------------------


def _classifier_tokens(device):
    from test_classifier import tiny_classifier

    model = tiny_classifier()
    apply_preset(model, "last_block")
    model.to(device)
    generator = torch.Generator().manual_seed(0)
    tokens = {"train": list(torch.randint(0, 5000, (6, 10), generator=generator)),
              "validation": list(torch.randint(0, 5000, (2, 10), generator=generator))}
    return model, tokens


def _classify(budget_gb, device, mode="auto"):
    model, tokens = _classifier_tokens(device)
    request = policy.CacheRequest(mode, budget_gb, "--cache_activations on", "--cache_budget_gb")
    return memory.prepare(model, tokens, device, None, request, batch_size=4, log=LOG)


def test_classify_over_budget_stores_bf16_then_goes_uncached(device):
    fp32_bytes = 8 * 10 * 32 * 4  # 8 examples x 10 positions x width 32, fp32 (the hidden cache)
    cache, info, _ = _classify(budget_gb=2 * fp32_bytes / GIB, device=device)
    assert (info["kind"], info["dtype"], info["bytes"]) == ("hidden", "float32", fp32_bytes)
    assert cache.splits["train"][0].device.type == device.type  # the cache lives where the model runs
    cache, info, _ = _classify(budget_gb=0.75 * fp32_bytes / GIB, device=device)
    assert (info["kind"], info["dtype"], info["bytes"]) == ("hidden", "bfloat16", fp32_bytes // 2)
    assert cache.splits["train"][0].dtype == torch.bfloat16
    cache, info, seconds = _classify(budget_gb=0.25 * fp32_bytes / GIB, device=device)
    assert cache is None and info == {"kind": "none", "bytes": 0, "reason": "over budget"} and seconds == 0.0


def _sft(budget_gb, device, components=("pause_head",), mode="auto"):
    model = tiny_model()
    set_dropout(model.hf_model, 0.0)
    apply_components(model, components)
    model.to(device)
    tokenizer = model.tokenizer
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "two plus three?", "answer": "5"}]
    examples = sft_data.encode_rows(tokenizer, rows, 64, model.control_tokens).examples
    request = policy.CacheRequest(mode, budget_gb, "cache_activations=on", "cache_budget_gb")
    info, _ = sft_prefix.prepare(model, {"train": examples}, sft_data.pad_token_id(tokenizer), request, device=device,
                                 autocast_dtype=None, dtype=torch.float32, precision="fp32", batch_size=2, log=LOG)
    return info, examples


def test_sft_is_exact_or_uncached_never_bf16(device):
    info, examples = _sft(budget_gb=1.0, device=device)
    fp32_bytes = sum(len(e.input_ids) for e in examples) * 32 * 4
    assert (info["kind"], info["dtype"], info["bytes"]) == ("final_hidden", "float32", fp32_bytes)
    # Between half and the full size classify would store bf16; sft keeps its promise of an exact cache.
    info, examples = _sft(budget_gb=0.75 * fp32_bytes / GIB, device=device)
    assert info == {"kind": "none", "bytes": 0, "reason": "over budget"}
    assert all(e.hidden is None for e in examples)
    with pytest.raises(UsageError, match="^cache_activations=on cannot be exact here"):
        _sft(budget_gb=1.0, device=device, components=("pause_embedding", "pause_head"), mode="on")
