"""The memory policy every cache follows, and the two ways a cache request ends without a cache.

Budget: `budget_gb` when the user set it, else a quarter of the memory free on the device that would
hold the cache (the rest is for the model, the optimizer and the batches). Over the budget, a cache
stored in fp32 is stored in bf16 instead (half the bytes, no longer bit-exact) where the recipe accepts
that; if it still does not fit, the run goes uncached. A request for a cache that cannot be exact is an
error when the user demanded the cache ("on"), and a logged "off" otherwise ("auto").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from unfreeze.errors import UsageError


@dataclass(frozen=True)
class CacheRequest:
    """What the user asked for, and how to name the settings in messages (flags or config keys)."""

    mode: str  # "auto" or "on" ("off" never asks for a cache)
    budget_gb: float | None  # None: a quarter of the free memory
    on_setting: str  # how the user spells mode "on": "--cache_activations on" / "cache_activations=on"
    budget_setting: str  # "--cache_budget_gb" / "cache_budget_gb"


@dataclass(frozen=True)
class BudgetDecision:
    """Where the budget leaves a cache: the dtype to store it in (None: no cache), its size, and why."""

    dtype: torch.dtype | None
    estimated_bytes: int
    budget_bytes: float
    notes: list[str] = field(default_factory=list)  # one log line per step taken

    @property
    def fits(self) -> bool:
        return self.dtype is not None


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


def budget_bytes(budget_gb: float | None, device: torch.device) -> float:
    return budget_gb * 2**30 if budget_gb is not None else available_memory_bytes(device) // 4


def fit_budget(estimated_bytes: int, dtype: torch.dtype, budget: float, budget_setting: str, *,
               bf16_fallback: bool) -> BudgetDecision:
    """The policy itself, a pure function: keep, halve to bf16 (if accepted), or drop the cache."""
    notes = []
    if bf16_fallback and estimated_bytes > budget and dtype == torch.float32:
        dtype, estimated_bytes = torch.bfloat16, estimated_bytes // 2
        notes.append("activation cache: fp32 exceeds the budget; storing in bf16 (results no longer bit-exact)")
    if estimated_bytes > budget:
        notes.append(f"activation cache: off ({estimated_bytes / 2**30:.2f} GiB exceeds the budget of "
                     f"{budget / 2**30:.2f} GiB; raise {budget_setting} to enable)")
        return BudgetDecision(None, estimated_bytes, budget, notes)
    return BudgetDecision(dtype, estimated_bytes, budget, notes)


def within_budget(request: CacheRequest, estimated_bytes: int, dtype: torch.dtype, device: torch.device,
                  log: logging.Logger, *, bf16_fallback: bool) -> BudgetDecision:
    """`fit_budget` against the request's budget on `device`, with its steps logged."""
    decision = fit_budget(estimated_bytes, dtype, budget_bytes(request.budget_gb, device), request.budget_setting,
                          bf16_fallback=bf16_fallback)
    for note in decision.notes:
        log.info(note)
    return decision


def no_cache(reason: str) -> dict:
    """The `cache` entry of metrics.json for a run without a cache."""
    return {"kind": "none", "bytes": 0, "reason": reason}


def not_exact(request: CacheRequest, reason: str, log: logging.Logger) -> dict:
    """A cache that would not be exact: an error if the user demanded it, else a logged "off"."""
    if request.mode == "on":
        raise UsageError(f"{request.on_setting} cannot be exact here: {reason}")
    log.info(f"activation cache: off ({reason})")
    return no_cache(reason)
