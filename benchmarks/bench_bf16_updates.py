"""How many AdamW updates pure bf16 training loses at lr 5e-5, next to fp32 master weights.

    python benchmarks/bench_bf16_updates.py [--steps 12] [--lr 5e-5] [--width 64] [--layers 2] [--batch 4]

A small random GPT-2 (transformers' initialisation, std 0.02) with a pause token trains the seed table's
widest row -- pause embedding, pause head, LM head and LoRA (r 16, alpha 32, dropout 0) -- on GSM8K
answers with random pauses (../shared/data; GPT-2's BPE; up to 160 tokens, batch 4) with the recipe's
AdamW (no weight decay). The same steps run twice from the same weights: `bf16-pure` (weights, LoRA and
AdamW states in bf16) and fp32 weights and states (the masters of `bf16-mixed`). For every step and
trained tensor the table counts the elements that received a non-zero gradient but kept their exact
value: an update below half a bf16 step of the weight (bf16 keeps 8 significant bits, so a weight of
size |w| cannot move by less than about |w|/256). About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

import torch

from unfreeze.data import sft_data
from unfreeze.models.control.tokens import ControlTokenLM, register_control_tokens
from unfreeze.models.loading import ModelSource
from unfreeze.models.tokenizers import load_tokenizer
from unfreeze.models.trainable import apply_components, component_parameters

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAUSE = "<|pause|>"
COMPONENTS = ["pause_embedding", "pause_head", "lm_head", "lora"]


def batches(tokenizer, n_batches: int, batch_size: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = sft_data.read_rows(SHARED / "gsm8k" / "train.jsonl")[: n_batches * batch_size]
    for row in rows:  # a few pauses between words, as in the pause data
        words = row["answer"].split(" ")
        for _ in range(rng.randint(1, 5)):
            i = rng.randint(1, len(words) - 1)
            words[i] = PAUSE + words[i]
        row["answer"] = " ".join(words)
    examples = sft_data.encode_rows(tokenizer, rows, 160, [PAUSE]).examples
    collate = sft_data.Collator(sft_data.pad_token_id(tokenizer))
    return [collate(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]


def build(args, dtype: torch.dtype) -> ControlTokenLM:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(SHARED / "gpt2_bpe"))
    base = ModelSource("gpt2", weights="random", overrides={
        "n_layer": args.layers, "n_embd": args.width, "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attn_pdrop": 0.0}).load("causal_lm")
    model = ControlTokenLM.from_base(base, tokenizer, [PAUSE])
    model.add_lora(16, 32, 0.0)
    model.to(dtype)  # pure bf16: LoRA (fp32 from peft) and the new tensors too
    apply_components(model, COMPONENTS)
    return model


def unchanged_shares(args, dtype: torch.dtype, data: list[dict]) -> dict[str, list[float]]:
    """Per component: for each step, the share of elements with a non-zero gradient whose value stayed."""
    model = build(args, dtype)
    groups = {name: params for name, params in component_parameters(model).items() if name in COMPONENTS}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    shares: dict[str, list[float]] = defaultdict(list)
    for step in range(args.steps):
        model(**data[step % len(data)], return_logprobs=False).loss.backward()
        before = {id(p): (p.detach().clone(), p.grad != 0) for params in groups.values() for p in params}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name, params in groups.items():
            moved_or_not = [((p.detach() == before[id(p)][0]) & before[id(p)][1], before[id(p)][1]) for p in params]
            stayed = sum(int(s.sum()) for s, _ in moved_or_not)
            touched = sum(int(t.sum()) for _, t in moved_or_not)
            shares[name].append(stayed / max(touched, 1))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    tokenizer = load_tokenizer(str(SHARED / "gpt2_bpe"))
    register_control_tokens(tokenizer, [PAUSE], len(tokenizer))  # so that the data can hold pauses
    data = batches(tokenizer, args.steps, args.batch)
    results = {name: unchanged_shares(args, dtype, data)
               for name, dtype in (("bf16-pure", torch.bfloat16), ("bf16-mixed (fp32 masters)", torch.float32))}
    print(f"elements with a non-zero gradient left unchanged by an AdamW step (lr {args.lr}, {args.steps} steps; "
          f"first step / mean of the rest)")
    print(f"{'component':18s}" + "".join(f"{name:>30s}" for name in results))
    for component in COMPONENTS:
        cells = []
        for shares in results.values():
            values = shares[component]
            rest = sum(values[1:]) / max(len(values) - 1, 1)
            cells.append(f"{100 * values[0]:10.1f}% / {100 * rest:5.1f}%")
        print(f"{component:18s}" + "".join(f"{cell:>30s}" for cell in cells))


if __name__ == "__main__":
    main()
