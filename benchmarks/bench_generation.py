"""Generated tokens per second of `unfreeze.models.generation.greedy_generate`, side by side in one run.

Four decoders of the same random-weight GPT-2 (default: 6 layers, width 384, 6 heads, GPT-2's 50,257-token
vocabulary, 1,024 positions), on one batch of left-padded prompts of unequal lengths, each generating exactly
`--new_tokens` tokens per row (EOS is never allowed to end a row early, so every decoder does the same work):

1. `hf_generate`     Hugging Face `model.generate` (greedy, with its cache): the plain-LM reference;
2. `plain_cached`    our decoder on the plain LM, with the key/value cache;
3. `pause_cached`    our decoder on `ControlTokenLM` (the same LM + a pause token and head), with the cache;
4. `plain_uncached`  our decoder on the plain LM re-running the whole sequence for every token.

Reported: tokens/s of each (from the fastest repeat); cache speed-up = time(plain_uncached) /
time(plain_cached) (target >= 3x at 256 new tokens); pause-head overhead = time(pause_cached) /
time(plain_cached) - 1 (target < 10%). Cached runs are repeated, interleaved, because timings on a shared
machine are noisy: the fastest repeat counts, the median is shown too. The uncached run, the slow one,
runs once; its token ids are compared with the cached ones (they must be equal).

    python benchmarks/bench_generation.py                    # the defaults above, CPU or GPU
    python benchmarks/bench_generation.py --batch_size 8 --new_tokens 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build_models(args):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from unfreeze.models.control.tokens import ControlTokenLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=1024,
                        vocab_size=50257)
    lm = GPT2LMHeadModel(config).eval()
    # A word-level tokenizer with GPT-2's vocabulary size is all ControlTokenLM needs (no files).
    # Id 50256 is "<|endoftext|>", GPT2TokenizerFast's default EOS/BOS/UNK, so nothing is added.
    vocab = {f"t{i}": i for i in range(config.vocab_size - 1)} | {"<|endoftext|>": config.vocab_size - 1}
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=[])
    pause = ControlTokenLM.from_base(lm, tokenizer, control_tokens=["<|pause|>"]).eval()
    return lm, pause


def make_prompts(args) -> list[list[int]]:
    generator = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_prompt, args.max_prompt + 1, (args.batch_size,), generator=generator)
    return [torch.randint(0, 50256, (int(n),), generator=generator).tolist() for n in lengths]


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--n_head", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--min_prompt", type=int, default=32)
    parser.add_argument("--max_prompt", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each cached decoder (median)")
    parser.add_argument("--skip_uncached", action="store_true", help="only the cached decoders (fast)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    from unfreeze.models.generation import greedy_generate, left_pad, step_function
    from unfreeze.resources import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    lm, pause = build_models(args)
    lm.to(device)
    pause.to(device)
    prompts = make_prompts(args)
    pad_id, n = 50256, args.new_tokens
    plain_step, pause_step = step_function(lm), step_function(pause)

    def ours(step, use_cache=True, pause_ids=()):
        # eos_id=None: no row stops early, so every decoder generates exactly n tokens per row.
        return greedy_generate(step, prompts, eos_id=None, pad_id=pad_id, max_new_tokens=n, use_cache=use_cache,
                               pause_ids=pause_ids, device=device)

    def hf_generate():
        ids, mask = left_pad(prompts, pad_id, device)
        with torch.inference_mode():
            return lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=pad_id, eos_token_id=pad_id)

    decoders = {
        "hf_generate": hf_generate,
        "plain_cached": lambda: ours(plain_step),
        "pause_cached": lambda: ours(pause_step, pause_ids=pause.control_token_ids),
    }
    ours(plain_step)  # warm-up (allocator, kernels); not timed
    times: dict[str, list[float]] = {name: [] for name in decoders}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in decoders.items():  # interleaved, so that machine load hits all decoders alike
            seconds, outputs[name] = timed(fn, device)
            times[name].append(seconds)
    # The fastest repeat is the one least disturbed by other work on the machine; the median is shown too.
    seconds_of = {name: min(values) for name, values in times.items()}
    median_of = {name: statistics.median(values) for name, values in times.items()}
    if not args.skip_uncached:
        seconds_of["plain_uncached"], outputs["plain_uncached"] = timed(lambda: ours(plain_step, False), device)

    total = len(prompts) * n
    result = {
        "model": f"GPT-2 random weights, {args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, "
                 f"vocab 50257 (+1 pause token for pause_cached)",
        "device": str(device), "torch_threads": torch.get_num_threads(), "batch_size": len(prompts),
        "prompt_lengths": [len(p) for p in prompts], "new_tokens": n, "repeats": args.repeats,
        "tokens_per_s": {name: round(total / s, 1) for name, s in seconds_of.items()},
        "seconds_min": {name: round(s, 3) for name, s in seconds_of.items()},
        "seconds_median": {name: round(s, 3) for name, s in median_of.items()},
        "pause_overhead_pct": round(100 * (seconds_of["pause_cached"] / seconds_of["plain_cached"] - 1), 1),
        "pause_overhead_pct_median": round(100 * (median_of["pause_cached"] / median_of["plain_cached"] - 1), 1),
        "ours_vs_hf_generate": round(seconds_of["hf_generate"] / seconds_of["plain_cached"], 2),
    }
    if "plain_uncached" in seconds_of:
        result["cache_speedup"] = round(seconds_of["plain_uncached"] / seconds_of["plain_cached"], 2)
        result["cached_equals_uncached"] = (
            [g.tokens for g in outputs["plain_cached"]] == [g.tokens for g in outputs["plain_uncached"]])
    print(json.dumps(result, indent=2))
    if args.json:
        from unfreeze.files import atomic_write_json

        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
