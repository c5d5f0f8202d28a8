"""What the exhaustive sweep would cost, predicted from a few measured pieces, in seconds a busy machine does not
inflate. Pure functions (no torch, no clock of their own), so the tests drive them with scripted numbers.

**Measuring.** Every piece is timed twice: wall time and the process's CPU time. Load from other processes
stretches wall time, but their CPU time is not ours: with one torch thread our CPU time is the work itself,
whatever the load. With n threads CPU time sums the threads (up to n x wall on a quiet machine, more when a
thread spin-waits for a descheduled partner), so there the lower envelope of wall times is what load
distorts least: a step that ran while the cores were free shows the quiet time, and load only ever adds. One
rule covers both: per measurement min(wall, CPU), which is the CPU time with one thread and the wall time of
a quiet machine with more; over a candidate's steps the median (one thread) or the lower quartile (more
threads: the steps that ran with the cores free; not the minimum, because batches cut to their longest real
token differ in work). On CUDA the GPU's time is not the process's CPU time: wall time only.

**A run** of the sweep (`unfreeze classify` in `unfreeze sweep`, one (row, seed)) is: reading the data and
building the model (every run), hashing the frozen weights for the shared cache's key (every run that reads
it), the shared cache build (only where the sweep builds it, below), epochs x batches optimizer steps, and
classify's forward passes (periodic, per epoch, final). Saving `final/` is not counted.

**The sweep** runs its rows in order, each with every seed, all reading `<out>/features` (or the row's
`feature_cache_dir`): a run builds the cache when the cache of its key does not hold the boundary it
starts from (`cache/disk.get_or_build`); a build is counted as the whole frozen network over every example
once, and keeps the boundaries stored before. Since the store stops a build at the deepest boundary asked for and
continues a missing boundary from the latest one stored before it (issue 24), that is an upper bound for a build
after the first: the predicted build seconds of a sweep whose rows ask for ever later boundaries are too high
(measured only on the first build; not yet modelled). The key hashes the model's weights, every split's token
ids, precision and device (not the boundaries, nor the pooling), so with pretrained weights every seed shares one
cache, and with random weights (`--weights random`) each seed has its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# The cost model's error against real `unfreeze classify` runs in `unfreeze sweep` on three model sizes
# (`benchmarks/bench_suggest.py --sizes`, docs/suggest.md): the largest |predicted / measured - 1| of a run's
# work time, rounded up. The table prints it beside every predicted time. Measured on tiny settings (GPT-2 shapes
# 2x128, 4x256, 8x384: 12%, 10%, 7%; SmolLM2 on 32 messages: 12%); the full run in docs/suggest.md replaces it.
MEASURED_RUN_ERROR = 0.15

BUSY_CPU_SHARE = 0.8  # one thread that got less than this share of a core was sharing it


# --- measuring ------------------------------------------------------------------------------------------


def work_seconds(wall: float, cpu: float | None) -> float:
    """One measurement in seconds that load inflates least: min(wall, CPU), or wall where CPU time does not
    count the work (None: CUDA)."""
    return wall if cpu is None else min(wall, cpu)


def step_estimate(walls: list[float], cpus: list[float] | None, threads: int) -> float:
    """Seconds of one optimizer step from the steps measured so far (see the module docstring); the first step,
    which pays one-off costs (allocations, the optimizer's state), only when it is the only one."""
    pairs = list(zip(walls, cpus if cpus is not None else [None] * len(walls)))
    pairs = pairs[1:] or pairs
    values = sorted(work_seconds(wall, cpu) for wall, cpu in pairs)
    if not values:
        return float("nan")
    quantile = 0.5 if threads <= 1 or cpus is None else 0.25
    return values[int(quantile * (len(values) - 1))]


def timed(work: Callable[[], object], use_cpu: bool = True) -> tuple[object, float, float | None]:
    """`work()`, its wall seconds and its process CPU seconds (None where CPU time does not count the work)."""
    begin, begin_cpu = time.perf_counter(), time.process_time()
    value = work()
    return value, time.perf_counter() - begin, (time.process_time() - begin_cpu) if use_cpu else None


class WorkClock:
    """Seconds of work since it was made: min(elapsed wall, elapsed process CPU) on CPU, elapsed wall on CUDA.
    What `--budget 0.2` counts (a share of compute: the same unit the predicted sweep is in)."""

    def __init__(self, use_cpu: bool = True, wall: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.process_time):
        self.use_cpu, self._wall, self._cpu = use_cpu, wall, cpu
        self.wall0, self.cpu0 = wall(), cpu()

    def wall(self) -> float:
        return self._wall() - self.wall0

    def cpu(self) -> float:
        return self._cpu() - self.cpu0

    def __call__(self) -> float:
        return work_seconds(self.wall(), self.cpu() if self.use_cpu else None)


def machine_state(wall_s: float, cpu_s: float | None, threads: int, cores: int, load_avg: float) -> dict:
    """Whether other work shared the machine while suggest measured. With one thread the direct evidence: the
    share of a core this process got (CPU time / wall time; a quiet core gives ~1). With more threads (serial
    parts lower that share on a quiet machine too) or on CUDA: the 1-minute load average beside the cores, our
    own threads counted out (an average over the last minute, so it lags)."""
    share = cpu_s / (wall_s * threads) if cpu_s is not None and wall_s > 0 else None
    others = max(load_avg - threads, 0.0)
    if share is not None and threads == 1:
        busy = share < BUSY_CPU_SHARE
    else:
        busy = others >= cores / 2
    return {"busy": busy, "cpu_share": None if share is None else round(share, 3), "threads": threads,
            "cores": cores, "load_avg": round(load_avg, 2), "other_load": round(others, 2)}


def busy_note(machine: dict) -> str | None:
    """One line for the output when the machine was busy while measuring; None when it was quiet."""
    if not machine["busy"]:
        return None
    got = f"this process got {machine['cpu_share']:.0%} of its core; " if machine["cpu_share"] is not None else ""
    line = (f"the machine was busy while measuring ({got}load average {machine['load_avg']:.1f} on "
            f"{machine['cores']} cores): ")
    if machine["threads"] == 1 or machine["cpu_share"] is None:
        return line + ("times are predicted from CPU time (one thread), which the load does not inflate; "
                       "wall times here run longer than on a quiet machine")
    return line + (f"with {machine['threads']} threads CPU time is no load-free measure, so predicted times may be "
                   f"up to {machine['threads']}x too long; measure with OMP_NUM_THREADS=1 or on a quiet machine")


# --- a run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunShape:
    """The counts of a full run (from the data sizes and classify's options)."""

    epochs: int
    batch_size: int
    sizes: dict  # split -> examples
    eval_every: int = 50
    eval_batches: int = 5

    @property
    def steps_per_epoch(self) -> int:
        return self.sizes["train"] // self.batch_size  # drop_last, as classify's training loader

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def forward_examples(self) -> int:
        """Examples classify runs forward only (no gradient) in a full run."""
        val_batches = math.ceil(self.sizes["validation"] / self.batch_size)
        periodic = math.ceil(self.steps / self.eval_every) * (
            min(self.eval_batches, self.steps_per_epoch) + min(self.eval_batches, val_batches))
        per_epoch = self.epochs * (min(self.eval_batches, self.steps_per_epoch) + min(self.eval_batches, val_batches))
        final = sum(self.sizes.values())
        return (periodic + per_epoch) * self.batch_size + final


@dataclass(frozen=True)
class Fixed:
    """The measured costs that do not depend on the candidate (seconds of work)."""

    load_s: float  # reading and tokenising the data, building the model: every run
    key_s: float  # hashing the frozen weights for the shared cache's key: every run that reads the cache
    build_s: float  # one build of the shared cache: the frozen network once over every example
    once_s: float = 0.0  # what only a process's first check pays (imports, first reads of files): once a sweep
    check_s: float = 0.0  # checking the options and reading the data, the part of load_s that `unfreeze sweep`
    # also does for every row before its first run (`sweep.runner.check_rows`)


@dataclass(frozen=True)
class CandidateCost:
    """What a candidate's run reads from the shared cache and what its pieces cost (seconds of work)."""

    name: str
    cache: str  # "none" (nothing frozen past the embeddings), "pooled", "hidden", or "memory" (over the disk budget)
    boundary: int  # the stage its training steps start from
    step_s: float
    forward_example_s: float
    own_build_s: float = 0.0  # a build every run does alone: the in-memory cache of a boundary the disk cache left out

    @property
    def wanted(self) -> frozenset | None:
        """The hidden boundaries its run asks the shared cache for (None: it does not ask)."""
        if self.cache == "none":
            return None
        return frozenset({self.boundary}) if self.cache == "hidden" else frozenset()


def run_seconds(shape: RunShape, candidate: CandidateCost, fixed: Fixed, builds_shared: bool = False) -> dict:
    """Predicted seconds of one run of the sweep, and its parts; `builds_shared`: this run builds the shared cache."""
    parts = {
        "load_s": fixed.load_s,
        "cache_key_s": fixed.key_s if candidate.wanted is not None else 0.0,
        "cache_build_s": (fixed.build_s if builds_shared else 0.0) + candidate.own_build_s,
        "train_steps_s": shape.steps * candidate.step_s,
        "forward_passes_s": shape.forward_examples() * candidate.forward_example_s,
    }
    parts["run_s"] = sum(parts.values())
    return {k: round(v, 3) for k, v in parts.items()}


def cache_build_share(start_stage: int, num_blocks: int) -> float:
    """The share of a full forward pass that an in-memory cache build runs for this start stage (the stages
    before it); the shared disk cache always runs the whole network."""
    if start_stage <= 1:
        return 0.0  # no cache: the whole network runs every step
    return min(start_stage - 1, num_blocks + 1) / (num_blocks + 1)


# --- the sweep ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    name: str
    seed: int
    builds: bool  # this run builds (or rebuilds) the shared cache


def plan_sweep(candidates: list[CandidateCost], seeds: list[int], cached: frozenset | None,
               seed_keys: bool = False, cached_seed: int | None = None) -> list[PlannedRun]:
    """The sweep's runs in its order (rows, then seeds) and which of them build the shared cache.

    `cached`: the hidden boundaries the cache already holds on disk (None: no cache). With `seed_keys` (random
    weights) every seed has its own key, and only `cached_seed`'s cache is known to be on disk."""
    held: dict = {}  # key -> the boundaries its cache holds (absent: none built)
    key = (lambda seed: seed) if seed_keys else (lambda seed: None)
    if cached is not None:
        held[key(cached_seed)] = frozenset(cached)
    runs = []
    for candidate in candidates:
        for seed in seeds:
            wanted, have = candidate.wanted, held.get(key(seed))
            builds = wanted is not None and (have is None or not wanted <= have)
            if builds:  # a rebuild keeps what was stored before
                held[key(seed)] = (have or frozenset()) | wanted
            runs.append(PlannedRun(candidate.name, seed, builds))
    return runs


def predict_sweep(shape: RunShape, candidates: list[CandidateCost], fixed: Fixed, seeds: list[int],
                  cached: frozenset | None, seed_keys: bool = False, cached_seed: int | None = None) -> dict:
    """Predicted seconds of `unfreeze sweep` over `candidates` x `seeds`: the checks of every row before the first
    run (and the process's one-off costs), every run, the builds, the total."""
    by_name = {c.name: c for c in candidates}
    runs = [{"name": run.name, "seed": run.seed, "builds": run.builds,
             **run_seconds(shape, by_name[run.name], fixed, run.builds)}
            for run in plan_sweep(candidates, seeds, cached, seed_keys, cached_seed)]
    checks = fixed.once_s + len(candidates) * fixed.check_s
    return {"runs": runs, "builds": sum(r["builds"] for r in runs), "build_s": round(fixed.build_s, 3),
            "checks_s": round(checks, 3), "total_s": round(checks + sum(r["run_s"] for r in runs), 3)}


# --- memory ---------------------------------------------------------------------------------------------


def predict_peak_bytes(total_params: int, trainable_params: int, batch_size: int, length: int, hidden: int,
                       blocks_with_grad: int, heads: int, param_bytes: int = 4) -> int:
    """An estimate of peak memory: weights, gradients and AdamW's two moments of what trains, and the
    activations kept for backward by the blocks that run with gradients (~ 16 values per token and width
    per block for the linear layers, plus the attention maps; Korthikanti et al. 2022's count for fp32)."""
    states = total_params * param_bytes + trainable_params * 3 * 4
    tokens = batch_size * length
    activations = blocks_with_grad * (tokens * hidden * 16 + batch_size * heads * length * length * 2) * 4
    return int(states + activations)
