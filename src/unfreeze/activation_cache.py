"""Exact frozen-prefix caching: compute the activations of the frozen part of a network once.

With dropout 0.0 (the reference's setting), a stage none of whose parameters train is a fixed,
deterministic function of its input. The activations at the boundary between the frozen prefix
and the trainable suffix are therefore the same in every epoch and every evaluation pass; we compute
them once per example and run only the suffix afterwards. Which stages are frozen is decided from
the parameters each stage uses (`trainable.frozen_prefix_stages`), never from preset names.

Two shapes of cache:
  * `hidden`: the input of the first trainable stage, one (length, hidden) matrix per example;
  * `pooled`: when only the head trains, just the pooled final feature vector per example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from unfreeze.models.classifier import GPT2Classifier


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on the device that would hold the cache."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass
class CachePlan:
    """What would be cached, and why (or why not)."""

    start_stage: int  # first stage the training run executes; 0 means "no cache possible"
    kind: str  # "none", "hidden" or "pooled"
    reason: str
    dtype: torch.dtype = torch.float32
    estimated_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def plan_cache(model: GPT2Classifier, frozen_stages: int, lengths: list[int], hidden_size: int,
               dtype: torch.dtype) -> CachePlan:
    """Where the frozen prefix ends, and the bytes its activations take for `lengths` (all splits)."""
    total_stages = model.final_stage + 1  # embeddings, blocks, final LayerNorm
    if frozen_stages == 0:
        return CachePlan(0, "none", "the embeddings train, so no prefix of the network is frozen")
    if frozen_stages == 1:
        # Only the embedding lookup is frozen (LoRA, all blocks training): storing its output would cost
        # memory and save nothing.
        return CachePlan(0, "none", "block 0 trains; only the embedding lookup before it is frozen")
    bytes_per = torch.empty(0, dtype=dtype).element_size()
    if frozen_stages == total_stages:
        estimate = len(lengths) * hidden_size * bytes_per
        return CachePlan(total_stages, "pooled", "only the head trains: caching pooled features", dtype, estimate)
    estimate = sum(lengths) * hidden_size * bytes_per
    return CachePlan(frozen_stages, "hidden", f"stages before {_stage_name(model, frozen_stages)} are frozen",
                     dtype, estimate)


def _stage_name(model: GPT2Classifier, stage: int) -> str:
    if stage == 0:
        return "the embeddings"
    if stage <= model.num_blocks:
        return f"block {stage - 1}"
    return "the final LayerNorm"


@dataclass
class ActivationCache:
    """Per-example activations at `start_stage` (a list of tensors, one per example, in split order)."""

    start_stage: int
    kind: str
    splits: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for rows in self.splits.values() for t in rows)

    def batch(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        rows = self.splits[split]
        return torch.stack([rows[i] for i in indices.tolist()])


@torch.no_grad()
def build_cache(model: GPT2Classifier, plan: CachePlan, token_splits: dict[str, list[torch.Tensor]],
                device: torch.device, batch_size: int, autocast_dtype: torch.dtype | None) -> ActivationCache:
    """Run the frozen prefix once over every example of every split."""
    cache = ActivationCache(plan.start_stage, plan.kind)
    was_training = model.training
    model.eval()
    total = sum(len(rows) for rows in token_splits.values())
    with tqdm(total=total, desc="caching frozen activations", unit="ex", leave=False) as bar:
        for split, rows in token_splits.items():
            stored: list[torch.Tensor] = []
            # Batches of equal length only (padded data is all one length; unpadded goes one by one).
            step = batch_size if len({len(r) for r in rows}) == 1 else 1
            for begin in range(0, len(rows), step):
                ids = torch.stack(rows[begin:begin + step]).to(device)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    if plan.kind == "pooled":
                        out = model.pool(model.features(ids), ids)
                    else:
                        out = model.run_stages(model.embed(ids), 1, plan.start_stage)
                stored.extend(out.to(plan.dtype).unbind(0))
                bar.update(len(ids))
            cache.splits[split] = [t.clone() for t in stored]  # own storage per row: exact byte count
    model.train(was_training)
    return cache
