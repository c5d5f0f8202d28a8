"""Time and peak memory of a candidate's full `unfreeze classify` run, predicted from measured pieces.

A full run is: its activation-cache build (the frozen prefix over every example, once), epochs x
batches optimizer steps, classify's periodic evaluations (eval_batches train and validation batches every
eval_every steps, and at the end of every epoch), and the final accuracy passes over all three splits.
Each piece is (count) x (measured seconds of one): a training step of this candidate, a forward pass
per example of this candidate, and the shared cache build scaled to the stages the candidate freezes.
The prediction is of `train_time_s + eval_time_s` in classify's metrics.json; a sweep run adds the
model build (`model_build_s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunShape:
    """The counts of a full run (from the data sizes and classify's options)."""

    epochs: int
    batch_size: int
    sizes: dict  # split -> examples
    eval_every: int = 50
    eval_batches: int = 5

    @property
    def steps_per_epoch(self) -> int:
        return self.sizes["train"] // self.batch_size  # drop_last, as classify's training loader

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def forward_examples(self) -> int:
        """Examples classify runs forward only (no gradient) in a full run."""
        val_batches = math.ceil(self.sizes["validation"] / self.batch_size)
        periodic = math.ceil(self.steps / self.eval_every) * (
            min(self.eval_batches, self.steps_per_epoch) + min(self.eval_batches, val_batches))
        per_epoch = self.epochs * (min(self.eval_batches, self.steps_per_epoch) + min(self.eval_batches, val_batches))
        final = sum(self.sizes.values())
        return (periodic + per_epoch) * self.batch_size + final


def cache_build_share(start_stage: int, num_blocks: int) -> float:
    """The share of a full forward pass that classify's own cache build runs for this start stage."""
    if start_stage <= 1:
        return 0.0  # no cache: the whole network runs every step
    return min(start_stage - 1, num_blocks + 1) / (num_blocks + 1)


def predict_seconds(shape: RunShape, step_s: float, forward_example_s: float, full_forward_s: float,
                    start_stage: int, num_blocks: int) -> dict:
    """Predicted seconds of a full run, and its parts."""
    parts = {
        "cache_build_s": full_forward_s * cache_build_share(start_stage, num_blocks),
        "train_steps_s": shape.steps * step_s,
        "forward_passes_s": shape.forward_examples() * forward_example_s,
    }
    parts["run_s"] = sum(parts.values())
    return {k: round(v, 3) for k, v in parts.items()}


def predict_peak_bytes(total_params: int, trainable_params: int, batch_size: int, length: int, hidden: int,
                       blocks_with_grad: int, heads: int, param_bytes: int = 4) -> int:
    """An estimate of peak memory: weights, gradients and AdamW's two moments of what trains, and the
    activations kept for backward by the blocks that run with gradients (~ 16 values per token and width
    per block for the linear layers, plus the attention maps; Korthikanti et al. 2022's count for fp32)."""
    states = total_params * param_bytes + trainable_params * 3 * 4
    tokens = batch_size * length
    activations = blocks_with_grad * (tokens * hidden * 16 + batch_size * heads * length * length * 2) * 4
    return int(states + activations)
