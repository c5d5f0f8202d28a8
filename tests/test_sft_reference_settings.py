"""What the PauseToken reference ran: the best validation's weights kept (`keep: best`), and pure bf16
training (`precision: bf16-pure`) next to bf16 autocast over fp32 masters (`bf16-mixed`)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from test_sft import _tiny_config  # (pause_data is a conftest fixture)
from unfreeze.errors import UsageError
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config
from unfreeze.training.checkpoints import latest_checkpoint
from unfreeze.training.precision import resolve


def test_keep_best_reloads_the_weights_of_the_lowest_validation(tmp_path, pause_data):  # noqa: F811
    # The rate warms up over the whole run to 0.8: the loss falls, then climbs once the steps grow too big.
    path = _tiny_config(tmp_path, pause_data, unfreeze_lm_head=True, lr=1.0, warmup_steps=5, eval_every=1,
                        train_limit=20, keep="best")
    metrics = run_config(load_config(str(path), out=str(tmp_path / "run")))
    history = metrics["eval_history"]  # every validation: steps 1..4 and the final one at step 5
    assert [entry["step"] for entry in history] == [1, 2, 3, 4, 5]
    best = min(history, key=lambda entry: entry["eval_loss"])
    assert history[-1]["eval_loss"] > best["eval_loss"]  # it did rise at the end
    assert metrics["kept_step"] == best["step"] < 5
    # Measured again on the weights put back: the same numbers, to the last bit.
    for key in ("eval_loss", "eval_lm_loss", "eval_pause_loss"):
        assert metrics[key] == best[key]

    last = run_config(load_config(str(path), ["keep=last"], out=str(tmp_path / "last")))
    assert last["kept_step"] == 5 and last["eval_loss"] == history[-1]["eval_loss"]


def _dtypes_in_checkpoint(out) -> tuple[set, set]:
    checkpoint = latest_checkpoint(out / "checkpoints")
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        weights = {handle.get_tensor(name).dtype for name in handle.keys()}
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    moments = {value.dtype for state in optimizer["state"].values() for key, value in state.items()
               if key in ("exp_avg", "exp_avg_sq")}
    return weights, moments


@pytest.mark.parametrize("precision, trained_in", [("bf16-pure", torch.bfloat16), ("bf16-mixed", torch.float32)])
def test_precision_decides_the_dtype_of_trained_tensors_and_adam_states(tmp_path, pause_data, precision,  # noqa: F811
                                                                       trained_in):
    path = _tiny_config(tmp_path, pause_data, lora=True, lora_r=2, unfreeze_lm_head=True, train_limit=12,
                        save_steps=3, eval_every=0, precision=precision)
    out = tmp_path / "run"
    metrics = run_config(load_config(str(path), out=str(out)))
    assert metrics["precision"] == precision
    assert len(metrics["trainable_tensors"]) == 8  # pause embedding, pause head (2), LM head, 2 x LoRA A and B
    weights, moments = _dtypes_in_checkpoint(out)
    assert weights == {trained_in} and moments == {trained_in}
    with safe_open(str(out / "final" / "model.safetensors"), framework="pt") as handle:  # frozen weights too
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {trained_in}


def test_one_precision_vocabulary():
    assert resolve("fp32").autocast_dtype is None and resolve("fp32").weights == torch.float32
    mixed = resolve("bf16-mixed")
    assert (mixed.weights, mixed.autocast_dtype, mixed.cast_everything) == (torch.float32, torch.bfloat16, False)
    pure = resolve("bf16-pure")
    assert (pure.weights, pure.autocast_dtype, pure.cast_everything) == (torch.bfloat16, None, True)
    with pytest.raises(UsageError, match="precision='fp16' is not one of: fp32, bf16-mixed, bf16-pure"):
        resolve("fp16")
