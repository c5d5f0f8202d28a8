"""Training precision as one choice: `bf16-pure`, `bf16-mixed` or `fp32`.

* `bf16-pure` -- every weight in bf16, LoRA and the new tensors included, so AdamW's moments are bf16
  too; no autocast. What the PauseToken reference ran (bf16 weights, LoRA and AdamW states). Cheapest,
  but an update smaller than half a bf16 step of the weight it is added to is lost (docs/sft.md measures
  how often that happens at lr 5e-5). peft makes LoRA weights fp32 on a bf16 model; they are cast back.
* `bf16-mixed` -- fp32 weights and AdamW state ("masters"), bf16 autocast for the matrix products.
* `fp32` -- fp32 throughout.

Unset, the older keys decide as before: `dtype` for the weights, `mixed_precision` for autocast (so
`mixed_precision: bf16` is bf16-mixed). Setting `precision` together with a contradicting value of one
of them is an error naming both.
"""

from __future__ import annotations

from dataclasses import dataclass

from unfreeze.errors import UsageError

PRECISIONS = ("bf16-pure", "bf16-mixed", "fp32")
_PRESETS = {  # precision -> (weight dtype, accelerate mixed_precision, cast LoRA and new tensors too)
    "bf16-pure": ("bfloat16", "no", True),
    "bf16-mixed": ("float32", "bf16", False),
    "fp32": ("float32", "no", False),
}


@dataclass(frozen=True)
class Precision:
    name: str  # one of PRECISIONS, or the older keys' combination, e.g. "dtype=float16, mixed_precision=no"
    weights: str  # dtype the model is loaded in
    autocast: str  # accelerate's mixed_precision: no, bf16, fp16
    cast_everything: bool  # after building: every parameter (LoRA, control tokens, pause head) to `weights`


def resolve(precision: str | None, dtype: str = "float32", mixed_precision: str = "no") -> Precision:
    """The precision a config asks for (`dtype` and `mixed_precision` are the older keys)."""
    if precision is None:
        for name, (weights, autocast, cast) in _PRESETS.items():
            if (weights, autocast, cast) == (dtype, mixed_precision, False):
                return Precision(name, weights, autocast, cast)
        return Precision(f"dtype={dtype}, mixed_precision={mixed_precision}", dtype, mixed_precision, False)
    if precision not in _PRESETS:
        raise UsageError(f"precision={precision!r} is not one of: {', '.join(PRECISIONS)}")
    weights, autocast, cast = _PRESETS[precision]
    if dtype not in ("float32", weights):
        raise UsageError(f"precision={precision} keeps the weights in {weights}; remove dtype={dtype}")
    if mixed_precision not in ("no", autocast):
        raise UsageError(f"precision={precision} uses mixed_precision={autocast}; remove "
                         f"mixed_precision={mixed_precision}")
    return Precision(precision, weights, autocast, cast)
