"""fp32 against bf16 on this machine, side by side: the evidence behind `--precision`'s default (issue 16).

    PYTHONPATH=src python benchmarks/bench_bf16.py [--batch 8] [--length 120] [--repeats 3]

Two measurements, each fp32 then bf16 in the same process:

* a matrix product of GPT-2 small's MLP shape, (batch x length, 768) @ (768, 3072), in GFLOP/s;
* one GPT-2-small block (random weights, dropout 0) forward + backward on batch x length positions, fp32
  against the bf16 autocast that `unfreeze classify --precision bf16` uses, in seconds (median).

bf16 pays off only where the hardware multiplies it natively (CUDA since Ampere; CPUs with AVX512-BF16 or
AMX). Elsewhere PyTorch converts and multiplies in software, and bf16 is much slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block


def matmul_gflops(dtype: torch.dtype, rows: int, repeats: int) -> float:
    a, b = torch.randn(rows, 768).to(dtype), torch.randn(768, 3072).to(dtype)
    a @ b  # warm-up
    begin = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * 768 * 3072 * repeats / (time.perf_counter() - begin) / 1e9


def block_step_s(autocast: bool, batch: int, length: int, repeats: int) -> float:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=768, n_head=12, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    config._attn_implementation = "sdpa"
    block = GPT2Block(config).train()
    hidden = torch.randn(batch, length, 768)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        begin = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = block(hidden)
            out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        times.append(time.perf_counter() - begin)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = args.batch * args.length
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    fp32, bf16 = (matmul_gflops(dtype, rows, args.repeats) for dtype in (torch.float32, torch.bfloat16))
    print("| measurement | fp32 | bf16 | bf16 speed-up |\n|---|---|---|---|")
    print(f"| matmul ({rows}, 768) @ (768, 3072) | {fp32:.1f} GFLOP/s | {bf16:.1f} GFLOP/s | {bf16 / fp32:.2f}× |")
    full, mixed = (block_step_s(autocast, args.batch, args.length, args.repeats) for autocast in (False, True))
    print(f"| GPT-2-small block fwd+bwd, {args.batch} x {args.length} | {full:.3f} s | {mixed:.3f} s "
          f"| {full / mixed:.2f}× |")


if __name__ == "__main__":
    main()
