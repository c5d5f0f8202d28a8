"""The classifier's training loop: gradient accumulation is one step on the batches together."""

import pytest
import torch

from test_classifier import tiny_classifier
from unfreeze.models.trainable import apply_preset
from unfreeze.training.loop import ClassifierInputs, ClassifierTraining, Schedule

CPU = torch.device("cpu")
# float64: in float32 the key biases (whose true gradient is zero: softmax ignores a shift shared by all
# keys) get rounding-noise gradients that AdamW normalises to steps of up to ~5e-4, drowning the comparison.
DTYPE = torch.float64


def _train_on(examples: torch.Tensor, labels: list[int], batch_size: int, accumulation_steps: int, epochs: int):
    """Train a fresh tiny classifier (everything trains) with classify's loop; returns its weights.

    The loader shuffles: a permutation of the same length from the same seed, so the k small batches of one
    run are, in order, the examples of one large batch of the other."""
    model = tiny_classifier(seed=0).to(DTYPE)
    apply_preset(model, "all")
    tokens = {"train": list(examples), "validation": list(examples[:2])}
    schedule = Schedule(num_epochs=epochs, batch_size=batch_size, accumulation_steps=accumulation_steps, lr=1e-2,
                        eval_every=1000, eval_batches=1, seed=0)
    ClassifierTraining(model, ClassifierInputs(model, tokens, None, CPU, None), {"train": labels, "validation": labels[:2]},
                       schedule, CPU).advance()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("k", [2, 3])
def test_accumulating_k_batches_equals_one_step_on_them_together(k):
    """The loss of each small batch is divided by k, so k accumulated batches give the gradient of the
    mean loss over their union: the same AdamW steps as batches k times larger (two epochs, so the
    optimizer's moments carry over between steps too)."""
    generator = torch.Generator().manual_seed(1)
    examples = torch.randint(0, 5000, (4 * k, 8), generator=generator)  # 2k batches of 2, or 2 of 2k
    labels = torch.randint(0, 2, (len(examples),), generator=generator).tolist()
    accumulated = _train_on(examples, labels, batch_size=2, accumulation_steps=k, epochs=2)
    together = _train_on(examples, labels, batch_size=2 * k, accumulation_steps=1, epochs=2)
    start = tiny_classifier(seed=0).head.weight.detach()
    assert (together["head.weight"] - start).abs().max() > 1e-2  # four AdamW steps of lr 1e-2 moved it
    for name, value in together.items():
        torch.testing.assert_close(accumulated[name], value, rtol=0, atol=1e-9, msg=name)  # seen: 3e-13
