"""LoRA (reference layout) against training every weight: one forward+backward and one forward.

GPT-2 shape at width 768 with 2 blocks, batch 8 x 120 tokens, fp32, median of 6 steps each. Run as
`PYTHONPATH=src python benchmarks/bench_lora.py [--profile]`; on a shared CPU the numbers move with load.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2Model

from unfreeze.models import trainable
from unfreeze.models.classifier import DecoderClassifier


def make(preset: str) -> DecoderClassifier:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=768, n_head=12, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    config._attn_implementation = "sdpa"
    model = DecoderClassifier(GPT2Model(config))
    trainable.apply_preset(model, preset, 16, 16, seed=0)
    model.reduce_last_block = False  # the whole network, as in the benchmark against the reference
    return model.train()


def median_s(step, repeats: int = 6) -> float:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return sorted(times)[repeats // 2]


def main() -> None:
    ids, labels = torch.randint(0, 50000, (8, 120)), torch.randint(0, 2, (8,))
    for preset in ("all", "lora"):
        model = make(preset)
        train_s = median_s(lambda: F.cross_entropy(model(ids), labels).backward())
        with torch.no_grad():
            forward_s = median_s(lambda: model(ids))
        print(f"{preset:5s} forward+backward {train_s:.3f} s   forward {forward_s:.3f} s")
    if "--profile" in sys.argv:
        from torch.profiler import profile

        model = make("lora")
        with profile(record_shapes=True) as prof:
            F.cross_entropy(model(ids), labels).backward()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
