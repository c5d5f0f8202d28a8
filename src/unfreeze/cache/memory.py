"""`unfreeze classify`'s exact frozen-prefix cache: compute the activations of the frozen part once.

With dropout 0.0 (the reference's setting), a stage none of whose parameters train is a fixed,
deterministic function of its input. The activations at the boundary between the frozen prefix
and the trainable suffix are therefore the same in every epoch and every evaluation pass; we compute
them once per example and run only the suffix afterwards. Which stages are frozen is decided from
the parameters each stage uses (`frozen_prefix_stages`), never from preset names.

Two shapes of cache:
  * `hidden`: the input of the first trainable stage, one (length, hidden) matrix per example; the
    attention mask and rotary embeddings the later blocks need are recomputed from the token ids (cheap,
    exact), so the cache is the same for every architecture;
  * `pooled`: when only the head trains, just the pooled final feature vector per example.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from unfreeze.cache import policy
from unfreeze.models.dropout import active_dropout
from unfreeze.models.classifier import DecoderClassifier, real_lengths


def frozen_prefix_stages(stage_modules: list[list[nn.Module]]) -> int:
    """How many leading stages are exact, deterministic functions of the input.

    A stage qualifies when none of the parameters it uses train and no dropout in it is active;
    its output can then be computed once and reused. Decided from the modules each stage runs, so
    tied or shared weights are judged where they are used.
    """
    count = 0
    for modules in stage_modules:
        for module in modules:
            if any(p.requires_grad for p in module.parameters()) or active_dropout(module):
                return count
        count += 1
    return count


@dataclass
class CachePlan:
    """What would be cached, and why (or why not)."""

    start_stage: int  # first stage the training run executes; 0 means "no cache possible"
    pooled: bool  # only the head trains: pooled vectors are stored, not hidden states
    reason: str
    dtype: torch.dtype = torch.float32
    estimated_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return self.start_stage > 0

    @property
    def kind(self) -> str:
        """How metrics.json describes the cache: none, hidden or pooled."""
        return "none" if not self.enabled else "pooled" if self.pooled else "hidden"


def plan_cache(model: DecoderClassifier, frozen_stages: int, lengths: list[int], hidden_size: int,
               dtype: torch.dtype) -> CachePlan:
    """Where the frozen prefix ends, and the bytes its activations take for `lengths` (all splits)."""
    total_stages = model.final_stage + 1  # embeddings, blocks, final norm
    if frozen_stages == 0:
        return CachePlan(0, False, "the embeddings train, so no prefix of the network is frozen")
    if frozen_stages == 1:
        # Only the embedding lookup is frozen (LoRA, all blocks training): storing its output would cost
        # memory and save nothing.
        return CachePlan(0, False, "block 0 trains; only the embedding lookup before it is frozen")
    bytes_per = torch.empty(0, dtype=dtype).element_size()
    if frozen_stages == total_stages:
        estimate = len(lengths) * hidden_size * bytes_per
        return CachePlan(total_stages, True, "only the head trains: caching pooled features", dtype, estimate)
    estimate = sum(lengths) * hidden_size * bytes_per
    return CachePlan(frozen_stages, False, f"stages before {_stage_name(model, frozen_stages)} are frozen",
                     dtype, estimate)


def _stage_name(model: DecoderClassifier, stage: int) -> str:
    if stage == 0:
        return "the embeddings"
    if stage <= model.num_blocks:
        return f"block {stage - 1}"
    return "the final norm"


@dataclass
class ActivationCache:
    """Per-example activations at `start_stage` (a list of tensors, one per example, in split order)."""

    start_stage: int
    splits: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # the build's throughput (metrics.json's `cache` entry)

    def nbytes(self) -> int:
        """Bytes held, a tensor shared by repeated examples counted once."""
        distinct = {id(t): t for rows in self.splits.values() for t in rows}
        return sum(t.numel() * t.element_size() for t in distinct.values())

    def rows(self, split: str, indices) -> torch.Tensor:
        """The rows of `indices` (`cache.protocol.ActivationReader`); rows stored cut to the positions the run
        reads are zero-padded to the longest."""
        rows = [self.splits[split][int(i)] for i in indices]
        if len({len(row) for row in rows}) == 1:
            return torch.stack(rows)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def _real_length(model: DecoderClassifier, row: torch.Tensor) -> int:
    return int(real_lengths(row[None], model.pad_token_id)[0])


def stored_length(model: DecoderClassifier, row: torch.Tensor) -> int:
    """The leading positions of one example the run reads (`DecoderClassifier.needed_length`): what the
    build computes and the hidden cache stores."""
    return model.needed_length(row[None])


# The build's own batch size, chosen for throughput: as many rows as fit in this many positions (large
# matmuls run near the machine's peak; the activations of one batch stay ~25 MiB per GPT-2-small layer).
BUILD_TOKENS_PER_BATCH = 8192


def build_batches(model: DecoderClassifier, rows: list[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Example indices per batch of the cache build: at least `batch_size` rows, else up to
    `BUILD_TOKENS_PER_BATCH` positions.

    Examples are sorted by `stored_length` (the positions the pooled output depends on: under an attention
    mask the real tokens, under a causal mask nothing after the pooled position) and each batch runs only
    up to its longest: the build costs the positions the run reads, not the padded ones. GPT-2 under the
    reference's semantics has no mask on padding: unpadded rows of different lengths go one by one.
    """
    one_by_one = model.reference_padding and len({len(r) for r in rows}) > 1
    return batches_by_length([stored_length(model, row) for row in rows], batch_size, one_by_one)


def batches_by_length(lengths: list[int], batch_size: int, one_by_one: bool = False) -> list[list[int]]:
    """Row indices per build batch: rows sorted by length, at least `batch_size` rows, else up to
    `BUILD_TOKENS_PER_BATCH` positions (each batch runs only up to its longest row); `one_by_one`: in order."""
    if one_by_one:
        return [[i] for i in range(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:  # ascending lengths: the newest row is the batch's longest
        if current and len(current) >= batch_size and (len(current) + 1) * lengths[i] > BUILD_TOKENS_PER_BATCH:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, seconds: float = 0.2, size: int = 1024) -> float:
    """Achieved GFLOP/s of repeated size x size products for about `seconds`: the practical peak to compare with."""
    a = torch.randn(size, size, device=device).to(dtype)
    a @ a  # warm-up
    count, begin = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - begin < seconds:
        a @ a
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - begin) / 1e9


def slow_bf16_warning(device: torch.device) -> str | None:
    """A line saying bf16 is slower than fp32 on this CPU (no native bf16: PyTorch emulates it), else None.

    Measured, not guessed from CPU flags: small probes (~0.1 s) of both dtypes, as `benchmarks/bench_bf16.py`
    measures at GPT-2 shapes (AVX2 CPU: bf16 ~70x slower).
    """
    if device.type != "cpu":
        return None
    fp32 = matmul_peak_gflops(torch.float32, device, seconds=0.05, size=256)
    bf16 = matmul_peak_gflops(torch.bfloat16, device, seconds=0.05, size=256)
    if bf16 >= fp32:
        return None
    return (f"--precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) multiplies bf16 matrices at "
            f"{bf16:.1f} GFLOP/s against {fp32:.1f} for fp32 (no native bf16); --precision fp32 is faster here")


def _build_stats(model: DecoderClassifier, plan: CachePlan, tokens: int, examples: int, seconds: float,
                 dtype: torch.dtype, device: torch.device) -> dict:
    """Throughput of the build: examples/s and ~2 x frozen non-embedding parameters x computed tokens / s."""
    stages = model.stage_modules()[1:plan.start_stage]  # blocks (and the final norm when pooled)
    params = sum(p.numel() for modules in stages for module in modules for p in module.parameters())
    achieved = 2 * params * tokens / max(seconds, 1e-9) / 1e9
    peak = matmul_peak_gflops(dtype, device)
    return {"examples_per_s": float(f"{examples / max(seconds, 1e-9):.4g}"), "tokens": tokens,
            "gflops": float(f"{achieved:.4g}"), "matmul_peak_gflops": round(peak, 1),
            "fraction_of_peak": round(achieved / peak, 3) if peak > 0 else None}


def trimmed_ids(model: DecoderClassifier, rows: list[torch.Tensor]) -> torch.Tensor:
    """The rows as one batch cut to the positions the run reads (`needed_length`); under an attention mask
    rows of different lengths are first cut or padded to the longest real one."""
    if model.reference_padding:
        ids = torch.stack(rows)
    else:
        length = max(_real_length(model, row) for row in rows)
        pad = torch.full((length,), model.pad_token_id, dtype=rows[0].dtype)
        ids = torch.stack([torch.cat([row[:length], pad[:max(length - len(row), 0)]]) for row in rows])
    return ids[:, :model.needed_length(ids)]


def distinct_rows(token_splits: dict[str, list[torch.Tensor]]) -> tuple[dict[str, list[torch.Tensor]],
                                                                       dict[str, list[int]]]:
    """Each split's rows not seen in an earlier split or earlier in it, and for every example the index of
    its row among all those (concatenated in split order). The frozen prefix is a function of the token
    ids alone, so a repeated example (the SMS split repeats 106 of its 1,494 messages) needs computing once."""
    index_of: dict[bytes, int] = {}
    new, where = {}, {}
    for split, rows in token_splits.items():
        new[split], where[split] = [], []
        for row in rows:
            key = row.numpy().tobytes()
            if key not in index_of:
                index_of[key] = len(index_of)
                new[split].append(row)
            where[split].append(index_of[key])
    return new, where


@torch.no_grad()
def build_cache(model: DecoderClassifier, plan: CachePlan, token_splits: dict[str, list[torch.Tensor]],
                device: torch.device, batch_size: int, autocast_dtype: torch.dtype | None) -> ActivationCache:
    """Run the frozen prefix once over every distinct example of every split; `cache.stats` says how fast.

    Repeated examples share one stored tensor (`ActivationCache.nbytes` counts it once). Batches are formed
    split by split, as the on-disk cache forms them, so both hold the same bits.
    """
    was_training = model.training
    model.eval()
    new_rows, where = distinct_rows(token_splits)
    distinct = sum(len(rows) for rows in new_rows.values())
    features, tokens, begin = [], 0, time.perf_counter()
    with tqdm(total=distinct, desc="caching frozen activations", unit="ex", leave=False) as bar:
        for rows in new_rows.values():
            computed, count = _prefix_features(model, plan, rows, device, batch_size, autocast_dtype, bar)
            features += computed
            tokens += count
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - begin
    model.train(was_training)
    cache = ActivationCache(plan.start_stage,
                            {split: [features[j] for j in indices] for split, indices in where.items()})
    cache.stats = _build_stats(model, plan, tokens, distinct, seconds, autocast_dtype or torch.float32, device)
    cache.stats["repeated_examples"] = sum(len(rows) for rows in token_splits.values()) - distinct
    return cache


def _prefix_features(model: DecoderClassifier, plan: CachePlan, rows: list[torch.Tensor], device: torch.device,
                     batch_size: int, autocast_dtype: torch.dtype | None, bar: tqdm) -> tuple[list[torch.Tensor], int]:
    """The frozen prefix's output for each row (in `rows`' order), and how many positions were computed."""
    stored: list[torch.Tensor | None] = [None] * len(rows)
    tokens = 0
    for indices in build_batches(model, rows, batch_size):
        ids = trimmed_ids(model, [rows[i] for i in indices]).to(device)
        tokens += ids.numel()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if plan.pooled:
                out = model.pooled_features(model.embed(ids), 1, ids)
            else:
                out = model.run_stages(model.embed(ids), 1, plan.start_stage, input_ids=ids)
        for i, row in zip(indices, out.to(plan.dtype).unbind(0)):
            # Only the positions the run reads are kept (the rest of the batch is padding nothing reads).
            keep = row if plan.pooled else row[:stored_length(model, rows[i])]
            stored[i] = keep.clone()  # own storage per row: exact byte count
        bar.update(len(ids))  # tqdm shows ex/s
    return stored, tokens


def prepare(model: DecoderClassifier, tokens: dict[str, list[torch.Tensor]], device: torch.device,
            autocast_dtype: torch.dtype | None, request: policy.CacheRequest, batch_size: int,
            log: logging.Logger) -> tuple[ActivationCache | None, dict, float]:
    """Decide whether caching is exact and affordable; build the cache if so.

    Returns the cache (None: run uncached), the `cache` entry of metrics.json, and the build seconds.
    """
    frozen = frozen_prefix_stages(model.stage_modules())
    lengths = [stored_length(model, row) for rows in tokens.values() for row in rows]
    dtype = torch.bfloat16 if autocast_dtype is not None else torch.float32
    plan = plan_cache(model, frozen, lengths, model.hidden_size, dtype)
    if not plan.enabled:
        return None, policy.not_exact(request, plan.reason, log), 0.0
    # classify accepts a bf16 copy of an fp32 cache over the budget (README: --cache_budget_gb).
    decision = policy.within_budget(request, plan.estimated_bytes, plan.dtype, device, log, bf16_fallback=True)
    if not decision.fits:
        return None, policy.no_cache("over budget"), 0.0
    plan.dtype, plan.estimated_bytes = decision.dtype, decision.estimated_bytes
    begin = time.perf_counter()
    cache = build_cache(model, plan, tokens, device, batch_size, autocast_dtype)
    build_s = time.perf_counter() - begin
    info = {"kind": plan.kind, "start_stage": plan.start_stage, "dtype": str(plan.dtype).replace("torch.", ""),
            "estimated_bytes": plan.estimated_bytes, "bytes": cache.nbytes(), "build_s": round(build_s, 3),
            "reason": plan.reason, **cache.stats}
    log.info(f"activation cache: {plan.reason}; {info['bytes'] / 2**20:.1f} MiB in {build_s:.1f}s")
    return cache, info, build_s
