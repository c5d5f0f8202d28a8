"""What this machine has free right now, for refusing work that cannot fit before it starts."""

from __future__ import annotations

import os

import torch

from unfreeze.errors import UsageError


def free_memory_bytes() -> int | None:
    """Physical memory available now (None where the OS does not say, e.g. not POSIX)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was requested but MPS is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or mps") from None


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak memory of `device` from now (CUDA; elsewhere nothing to reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """The run's peak memory: `peak_memory_bytes`, what tensors held at most on a CUDA device since the last
    reset (None elsewhere: torch counts no peak on the CPU), and `peak_rss_bytes`, the process's resident peak
    (all it ever held, runs before this one in the same process included: an upper bound)."""
    import resource

    cuda = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"peak_memory_bytes": cuda, "peak_rss_bytes": int(rss)}
