"""What each library feature buys on the uncached `all` training step, side by side in one process.

    python benchmarks/bench_train_step.py [--steps 8] [--batch 8] [--length 120] [--layers 12] [--width 768]

A GPT-2-small-shaped random classifier (the `classify` model) trains on random token ids; every variant
runs the same number of timed steps after two warm-up steps, and the table shows ms/step, training
GFLOP/s, the fraction of the measured matmul peak, and the speed-up over the first row:

  eager attention + foreach AdamW     the plain PyTorch baseline
  SDPA + foreach AdamW                scaled-dot-product attention (what `classify` uses)
  SDPA + fused AdamW                  one fused optimizer kernel (what `classify` uses)
  SDPA + fused AdamW + torch.compile  inductor-compiled model (compile time reported separately)
  SDPA + fused AdamW + bf16 autocast  `--precision bf16`
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2Model

from unfreeze.models.classifier import GPT2Classifier

from common import matmul_peak_gflops  # benchmarks/common.py (the script folder is on sys.path)


def build(args, attention: str) -> GPT2Classifier:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.width // 64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = attention
    model = GPT2Classifier(GPT2Model(config))
    if attention == "eager":
        # Our stage runner passes no mask for causal attention (SDPA's is_causal path); eager attention
        # needs an explicit causal mask to compute the same function.
        causal = torch.ones(args.length, args.length, dtype=torch.bool).tril()[None, None]
        model._attention_mask = lambda hidden: causal
    return model.train()


def time_variant(args, attention: str, fused: bool, compile_model: bool, bf16: bool) -> tuple[float, float]:
    model = build(args, attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=fused, foreach=not fused)
    forward = torch.compile(model) if compile_model else model
    ids = torch.randint(0, 50000, (args.batch, args.length))
    labels = torch.randint(0, 2, (args.batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(ids).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    begin = time.perf_counter()
    step()
    step()
    warmup = time.perf_counter() - begin
    begin = time.perf_counter()
    for _ in range(args.steps):
        step()
    return (time.perf_counter() - begin) / args.steps, warmup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--skip_compile", action="store_true", help="skip the torch.compile row (slow to compile)")
    args = parser.parse_args()
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    d, layers, length = args.width, args.layers, args.length
    flops_per_step = (6 * 12 * layers * d * d + 6 * layers * length * d) * length * args.batch
    variants = [
        ("eager attention + foreach AdamW", "eager", False, False, False),
        ("SDPA + foreach AdamW", "sdpa", False, False, False),
        ("SDPA + fused AdamW", "sdpa", True, False, False),
        ("SDPA + fused AdamW + torch.compile", "sdpa", True, True, False),
        ("SDPA + fused AdamW + bf16 autocast", "sdpa", True, False, True),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x {length} tokens, "
          f"{layers} layers x {d}; matmul peak fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s\n")
    print("| variant | ms/step | GFLOP/s | of peak | speed-up | warm-up s |\n|---|---|---|---|---|---|")
    baseline = None
    for name, attention, fused, compile_model, bf16 in variants:
        if compile_model and args.skip_compile:
            continue
        try:
            seconds, warmup = time_variant(args, attention, fused, compile_model, bf16)
        except Exception as err:  # e.g. no C++ compiler for inductor
            print(f"| {name} | failed: {type(err).__name__}: {str(err).splitlines()[0][:80]} | | | | |")
            continue
        baseline = baseline or seconds
        gflops = flops_per_step / seconds / 1e9
        peak = peaks["bf16" if bf16 else "fp32"]
        print(f"| {name} | {seconds * 1e3:.0f} | {gflops:.0f} | {gflops / peak:.0%} | {baseline / seconds:.2f}x | {warmup:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
