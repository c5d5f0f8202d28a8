"""Shared by the benchmarks (each is run as a script: `python benchmarks/NAME.py`)."""

from __future__ import annotations

import time

import torch


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a size x size matrix product: the machine's practical peak for `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    begin = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - begin) / 1e9
