"""`unfreeze sft` with cached final hidden states equals the uncached run, and caches only where exact.

sft runs where accelerate puts it: the test device (conftest hides the GPUs when that is the CPU)."""

import pytest
import torch

from unfreeze.cache import sft_prefix
from unfreeze.models.dropout import set_dropout
from unfreeze.models.trainable import apply_components
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config

from pause_helpers import tiny_model
from test_sft import _tiny_config  # (pause_data is a conftest fixture)

HEADS_ONLY = [
    {"unfreeze_pause_embedding": False, "unfreeze_pause_head": True},  # sft_fr_pembed
    {"unfreeze_pause_embedding": False, "unfreeze_pause_head": True, "unfreeze_lm_head": True},
]


@pytest.mark.parametrize("switches", HEADS_ONLY, ids=["pause_head", "pause_head+lm_head"])
def test_cached_sft_equals_uncached(tmp_path, pause_data, switches, device, tolerance):  # noqa: F811
    from accelerate import PartialState

    runs = {}
    for mode in ("off", "on"):
        path = _tiny_config(tmp_path, pause_data, dropout=0.0, cache_activations=mode, eval_at_start=True,
                            **switches)
        runs[mode] = run_config(load_config(str(path), out=str(tmp_path / mode)))
    assert PartialState().device.type == device.type  # accelerate ran both on the test device
    assert runs["on"]["cache"]["kind"] == "final_hidden" and runs["off"]["cache"]["kind"] == "none"
    tol = tolerance(cpu=1e-5)  # the CPU's: pytest.approx(abs=1e-5)
    for key in ("initial_eval_loss", "eval_loss", "eval_lm_loss", "eval_pause_loss"):
        assert runs["on"][key] == tol.approx(runs["off"][key]), (key, tol.reason)
    assert runs["on"]["eval_pause_loss"] < runs["on"]["initial_eval_pause_loss"]  # it did train
    cache = runs["on"]["cache"]
    assert abs(cache["estimated_bytes"] - cache["bytes"]) <= 0.1 * cache["bytes"]


@pytest.mark.parametrize("components", [["pause_embedding", "pause_head"], ["lm_head", "lm_embeddings"],
                                        ["lm_embeddings"]])
def test_never_caches_when_the_hidden_state_depends_on_a_trainable_tensor(components):
    model = tiny_model()
    set_dropout(model.hf_model, 0.0)
    apply_components(model, components)
    assert not sft_prefix.plan(model, [5], torch.float32).enabled


def test_a_tied_trainable_lm_head_never_caches():
    model = tiny_model()
    set_dropout(model.hf_model, 0.0)
    apply_components(model, ["pause_head"])
    hf = model.hf_model
    assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight  # tied
    hf.get_output_embeddings().weight.requires_grad_(True)  # training the head trains the embeddings
    assert not sft_prefix.plan(model, [5], torch.float32).enabled
    # Untied by `apply_components` when only the LM head trains: then the body is frozen and caching is exact.
    apply_components(model, ["lm_head", "pause_head"])
    assert sft_prefix.plan(model, [5], torch.float32).enabled


def test_dropout_and_lora_prevent_caching():
    model = tiny_model()
    apply_components(model, ["pause_head"])
    set_dropout(model.hf_model, 0.1)
    assert "dropout" in sft_prefix.plan(model, [5], torch.float32).reason
    model = tiny_model()
    set_dropout(model.hf_model, 0.0)
    model.add_lora(r=2, alpha=4, dropout=0.0)
    apply_components(model, ["lora"])
    assert not sft_prefix.plan(model, [5], torch.float32).enabled


def test_cache_on_where_not_exact_is_an_error(tmp_path, pause_data):  # noqa: F811
    from unfreeze.errors import UsageError

    path = _tiny_config(tmp_path, pause_data, cache_activations="on")  # dropout 0.1 and pause embedding train
    with pytest.raises(UsageError, match="cannot be exact"):
        run_config(load_config(str(path), out=str(tmp_path / "run")))
