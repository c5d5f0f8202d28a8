"""`unfreeze classify --feature_cache_dir`: the frozen prefix's activations from the shared on-disk cache.

The in-memory cache (`memory`) is built by every run anew; the on-disk one (`disk`) is keyed by
everything its values depend on (the frozen network's weights, every split's token ids, so data,
tokenizer and context length, the mask semantics, the precision and the device type) and so is built once
and read by every later run that freezes the same network: the rows and seeds of `unfreeze sweep`,
`unfreeze suggest`, and classify runs of other choices and other poolings (the hidden states are stored for
every position a pooling may read; each pooling's own pooled vectors beside them). A run asks only for what
it reads: the hidden states at its boundary, or, when only the head trains, its pooling's final pooled
vectors. Its reader (`disk.DiskReader`) hands the training loop the tensors the in-memory cache would: the
same bits where the run's pooling reads every stored position (every pooling under an attention mask but
`first`; `last` and mean under GPT-2's reference padding), else the same function of a longer batch (the
last bits may differ; tests/test_shared_cache.py says by how much).
"""

from __future__ import annotations

import logging
import time

import torch

from unfreeze.cache import disk
from unfreeze.cache.memory import frozen_prefix_stages, plan_cache


def prepare(model, tokens: dict[str, list[torch.Tensor]], cache_dir: str, precision: str, device: torch.device,
            batch_size: int, log: logging.Logger,
            budget_gb: float | None = None) -> tuple[disk.DiskReader | None, dict | None, float]:
    """The shared cache at the model's frozen boundary, reused or built.

    Returns (None, None, 0) where it does not apply (nothing but the embeddings is frozen, or examples of
    different lengths under --no_padding); the caller then takes the in-memory path. The seconds returned
    are the build's (0 when reused): like the in-memory build, work the uncached path does in training.
    """
    frozen = frozen_prefix_stages(model.stage_modules())
    if frozen <= 1 or len({len(r) for rows in tokens.values() for r in rows}) != 1:
        return None, None, 0.0
    dtype = torch.bfloat16 if precision != "fp32" else torch.float32
    plan = plan_cache(model, frozen, [1], model.hidden_size, dtype)
    boundaries = [] if plan.pooled else [plan.start_stage]
    begin = time.perf_counter()
    budget = budget_gb * 2**30 if budget_gb is not None else None
    cache, built = disk.get_or_build(model, tokens, cache_dir, boundaries, precision, device, budget, batch_size,
                                     pooled="final" if plan.pooled else None)
    seconds = time.perf_counter() - begin if built else 0.0
    if not plan.pooled and plan.start_stage not in cache.boundaries:
        return None, None, 0.0  # over the disk budget: the in-memory cache decides
    info = {"kind": plan.kind, "start_stage": plan.start_stage, "dtype": cache.meta["dtype"],
            "bytes": cache.nbytes(), "build_s": round(seconds, 3), "reason": plan.reason,
            "shared": {"folder": str(cache.folder), "built": built}}
    log.info(f"shared feature cache {'built' if built else 'reused'}: {cache.folder} "
             f"({info['bytes'] / 2**20:.1f} MiB, {plan.reason})")
    return cache.reader(plan.start_stage), info, seconds
