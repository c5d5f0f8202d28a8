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


# --- a frozen prefix that ends inside the body: the states at that block boundary ---------------------

PREFIX_ROWS = [
    {"unfreeze_pause_embedding": False, "unfreeze_pause_head": True, "trainable_layers": "last_block"},
    {"unfreeze_pause_embedding": False, "unfreeze_pause_head": False, "trainable_layers": "mlp:last_block+pause_head"},
    {"unfreeze_pause_embedding": False, "unfreeze_pause_head": True, "trainable_layers": "lora:last_block",
     "lora_dropout": 0.0, "lora_rank": 2},
]


class FrozenBlockCalls:
    """Counts forward calls of GPT-2 blocks none of whose parameters train (the frozen prefix's work)."""

    def __enter__(self):
        from torch import nn

        self.calls = 0

        def hook(module, _args, _output):
            params = list(module.parameters())
            if type(module).__name__ == "GPT2Block" and params and not any(p.requires_grad for p in params):
                self.calls += 1

        self.handle = nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *_):
        self.handle.remove()


@pytest.mark.parametrize("row", PREFIX_ROWS, ids=["last_block", "mlp", "lora"])
def test_a_prefix_cache_inside_the_body_equals_uncached_and_a_second_run_reads_it_from_disk(tmp_path, pause_data,
                                                                                          row, device, tolerance):
    runs = {}
    features = str(tmp_path / "features")
    for mode, extra in (("off", {}), ("memory", {}), ("disk", {"feature_cache_dir": features}),
                        ("again", {"feature_cache_dir": features})):
        path = _tiny_config(tmp_path, pause_data, dropout=0.0, cache_activations="off" if mode == "off" else "on",
                            eval_at_start=True, **row, **extra)
        with FrozenBlockCalls() as calls:
            runs[mode] = run_config(load_config(str(path), out=str(tmp_path / mode)))
        runs[mode]["frozen_calls"] = calls.calls
    for mode in ("memory", "disk", "again"):  # block 0 of 2 is frozen: its output is what is stored
        cache = runs[mode]["cache"]
        assert (cache["kind"], cache["boundary"], cache["estimated_bytes"]) == ("hidden", 2, cache["bytes"])
        for key in ("initial_eval_loss", "eval_loss", "eval_lm_loss", "eval_pause_loss"):
            assert runs[mode][key] == tolerance(cpu=1e-5).approx(runs["off"][key]), (mode, key)
    assert runs["off"]["frozen_calls"] > 0 and runs["memory"]["frozen_calls"] > 0  # trains, validates; or builds
    assert runs["disk"]["cache"]["shared"]["built"] and not runs["again"]["cache"]["shared"]["built"]
    assert runs["again"]["frozen_calls"] == 0 and runs["again"]["cache"]["build_s"] == 0
    assert runs["again"]["eval_loss"] < runs["again"]["initial_eval_loss"]  # it did train


def test_the_boundary_is_where_training_begins():
    model = tiny_model()
    set_dropout(model.hf_model, 0.0)
    apply_components(model, ["pause_head"], "mlp:last_block")
    assert (sft_prefix.plan(model, [5], torch.float32).boundary, sft_prefix.plan(model, [5], torch.float32).kind) == (
        2, "hidden")
    apply_components(model, [], "norms")  # every block's norms train (and the LM head): only the embeddings frozen
    assert "block 0 trains" in sft_prefix.plan(model, [5], torch.float32).reason
    apply_components(model, ["pause_head"])
    assert (sft_prefix.plan(model, [5], torch.float32).boundary, sft_prefix.plan(model, [5], torch.float32).kind) == (
        4, "final_hidden")  # after the final norm of 2 blocks: only the heads run


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("choice", ["mlp:last_block", "attention:blocks:1-2+pause_head", "lora:last_block"])
def test_cached_states_give_the_uncached_losses_and_gradients_on_every_architecture(arch, choice, device):
    """The states at the boundary, then the rest of the LM and the heads: the same losses and gradients as the
    whole forward, on right-padded batches of the pause model's own data (tiny GPT-2, Llama, Qwen2, GPT-NeoX)."""
    import logging

    from pause_helpers import PAUSE
    from test_vocabulary import L, pause_model
    from unfreeze.cache import policy
    from unfreeze.data import sft_data

    model = pause_model(arch, lora_blocks=[L - 1] if "lora" in choice else None)
    apply_components(model, [], choice)
    model.to(device)
    rows = [{"question": f"{a}+{b}?", "answer": f"{a}+{b} {PAUSE}= {a + b}" + " ok" * (a % 3)}
            for a, b in ((1, 2), (3, 4), (12, 5), (7, 7), (2, 9), (10, 10))]  # of different lengths: padded
    encoded = sft_data.encode_rows(model.tokenizer, rows, 60, model.control_tokens).examples
    collate = sft_data.Collator(sft_data.pad_token_id(model.tokenizer))

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**{k: v.to(device) for k, v in batch.items()}, return_logprobs=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    uncached = loss_and_grads(collate(encoded))
    request = policy.CacheRequest("on", None, "cache_activations=on", "cache_budget_gb")
    info, _ = sft_prefix.prepare(model, {"train": encoded}, collate.pad_id, request, device=device,
                                 autocast_dtype=None, dtype=torch.float32, precision="fp32", batch_size=4,
                                 log=logging.getLogger("test"))
    boundary = {"mlp:last_block": L, "attention:blocks:1-2+pause_head": 2, "lora:last_block": L}[choice]
    assert info["kind"] == "hidden" and info["boundary"] == boundary  # the input of the first block that trains
    batch = collate(encoded)
    assert "cached_hidden" in batch
    cached = loss_and_grads(batch)
    assert cached[0] == pytest.approx(uncached[0], abs=1e-5)
    for name, grad in uncached[1].items():
        torch.testing.assert_close(cached[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
