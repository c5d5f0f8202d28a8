"""Training precision as one choice, the same words for every task: `fp32`, `bf16-mixed`, `bf16-pure`.

* `fp32` -- fp32 throughout.
* `bf16-mixed` -- fp32 weights and AdamW state ("masters"), bf16 autocast for the matrix products.
* `bf16-pure` -- every weight in bf16, LoRA and the new tensors included, so AdamW's moments are bf16
  too; no autocast. What the PauseToken reference ran (bf16 weights, LoRA and AdamW states). Cheapest,
  but an update smaller than half a bf16 step of the weight it is added to is lost (docs/sft.md measures
  how often that happens at lr 5e-5; benchmarks/bench_bf16_updates.py). peft makes LoRA weights fp32 on a
  bf16 model; they are cast back. (sft only: classify trains fp32 masters.)

Autocast is applied here (`Precision.autocast`), not by accelerate: accelerate keeps its mixed-precision
setting in process-wide state that cannot be changed once set, and a sweep runs many recipes in one process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from unfreeze.errors import UsageError

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
_PRESETS = {  # precision -> (weight dtype, autocast dtype, cast LoRA and new tensors too)
    "fp32": (torch.float32, None, False),
    "bf16-mixed": (torch.float32, torch.bfloat16, False),
    "bf16-pure": (torch.bfloat16, None, True),
}


@dataclass(frozen=True)
class Precision:
    name: str  # one of PRECISIONS
    weights: torch.dtype  # dtype the model is loaded in
    autocast_dtype: torch.dtype | None  # autocast for the forward passes (None: off)
    cast_everything: bool  # after building: every parameter (LoRA, control tokens, pause head) to `weights`

    def autocast(self, device: torch.device):
        """The forward passes' autocast context on `device` (a no-op when off)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def resolve(precision: str, flag: str = "precision") -> Precision:
    if precision not in _PRESETS:
        raise UsageError(f"{flag}={precision!r} is not one of: {', '.join(PRECISIONS)}")
    return Precision(precision, *_PRESETS[precision])
