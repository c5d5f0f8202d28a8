"""Where the runs of a sweep execute: one (row, seed) at a time in this process, or as Ray tasks.

`run_unit` is the one function that runs a (row, seed): in its own partial folder, published by an
atomic rename once `metrics.json` exists. It is also what a Ray worker executes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unfreeze.registry import Task
from unfreeze.config import config_from_mapping, to_dict
from unfreeze.errors import UsageError
from unfreeze.files import PARTIAL_SUFFIX, atomic_write_json, read_json


def say(message: str) -> None:
    """A line on stderr, printed above the sweep's progress bar (not through it)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def final_dir(out: Path, row: str, seed: int) -> Path:
    return out / "runs" / row / f"seed-{seed}"


# --- one (row, seed) ------------------------------------------------------------------------------


@dataclass
class Unit:
    row: str
    seed: int
    options: dict[str, Any]
    init_from: str | None
    resources: dict[str, Any]


@dataclass
class Outcome:
    status: str  # "finished" | "failed"
    error: str | None = None
    metrics: dict[str, Any] | None = None
    seconds: float = 0.0
    log: str | None = None


def run_unit(command: Task, unit: Unit, out: str) -> Outcome:
    """Run one (row, seed) in its partial folder and publish it by renaming; never raises an Exception.

    The partial folder of a killed attempt is reused when it was made with the same config, so a
    recipe that checkpoints (`unfreeze sft`) continues from its last checkpoint instead of from scratch.
    Also what a Ray worker executes, so it only takes picklable arguments.
    """
    out_path = Path(out)
    final = final_dir(out_path, unit.row, unit.seed)
    if (final / "metrics.json").is_file():
        return Outcome("finished", metrics=read_json(final / "metrics.json"))
    partial = final.parent / f"seed-{unit.seed}{PARTIAL_SUFFIX}"
    options = dict(unit.options)
    options[command.out_option] = str(partial)
    options[command.seed_option] = unit.seed
    if unit.init_from is not None:
        source = final_dir(out_path, unit.init_from, unit.seed)
        options[command.init_option] = str(source / command.init_subdir if command.init_subdir else source)
    start = time.perf_counter()
    try:
        config = config_from_mapping(command.config, options, f"row {unit.row!r}")
        _clear_stale(final, partial, to_dict(config))
        if not (partial / "metrics.json").is_file():  # (else: killed between finishing and publishing)
            _run_into(command, config, partial)
        metrics = read_json(partial / "metrics.json")
    except Exception as err:  # noqa: BLE001 - a failing row is recorded and the sweep goes on
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        return Outcome("failed", error=one_line(err), seconds=time.perf_counter() - start, log=str(partial))
    publish(partial, final)
    return Outcome("finished", metrics=metrics, seconds=time.perf_counter() - start)


def _run_into(command: Task, config: Any, partial: Path) -> None:
    metrics = command.run(config)
    if not (partial / "metrics.json").is_file():
        if not isinstance(metrics, dict):
            raise RuntimeError(f"{command.name} wrote no metrics.json and returned {type(metrics).__name__}")
        atomic_write_json(partial / "metrics.json", metrics)


def _clear_stale(final: Path, partial: Path, config: dict[str, Any]) -> None:
    """Remove leftovers that must not be resumed: other attempts' folders, and a partial folder made
    with another config (a changed row, or a failure recorded in error.txt)."""
    for stale in final.parent.glob(f"seed-{final.name.removeprefix('seed-')}.partial-*"):  # older layout
        shutil.rmtree(stale, ignore_errors=True)
    if not partial.is_dir():
        partial.mkdir(parents=True)
        return
    recorded = partial / "config.json"
    same = recorded.is_file() and read_json(recorded) == json_round_trip(config)
    if not same or (partial / "error.txt").is_file():
        shutil.rmtree(partial)
        partial.mkdir(parents=True)


def json_round_trip(value: Any) -> Any:
    """What `value` reads back as from a JSON file (tuples become lists, keys strings)."""
    import json

    return json.loads(json.dumps(value, default=str))


def publish(partial: Path, final: Path) -> None:
    """Rename the finished partial folder into place (atomic); a result already there wins."""
    if (final / "metrics.json").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        return
    if final.exists():  # cannot hold a result (no metrics.json): not something we made, clear it
        shutil.rmtree(final)
    os.rename(partial, final)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]



class LocalExecutor:
    """Runs units one after another in this process, in submission order."""

    def __init__(self, command: Task, out: Path):
        self.command, self.out, self.queue = command, out, []

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.queue.clear()

    def check(self, units: list[Unit]) -> None:
        pass

    def submit(self, unit: Unit) -> None:
        self.queue.append(unit)

    def busy(self) -> bool:
        return bool(self.queue)

    def wait_one(self) -> tuple[Unit, Outcome]:
        unit = self.queue.pop(0)
        say(f"-> {unit.row} seed {unit.seed}: running")
        return unit, run_unit(self.command, unit, str(self.out))


class RayExecutor:
    """One Ray task per unit, with the row's resources; a fresh worker process per task."""

    def __init__(self, command: Task, out: Path, address: str | None):
        try:
            import ray
        except ImportError:
            raise UsageError("--backend ray needs Ray: pip install 'unfreeze[ray]'") from None
        self.ray, self.command, self.out, self.address = ray, command, out.resolve(), address
        self.futures: dict[Any, Unit] = {}
        self.started_ray = False

    def __enter__(self) -> "RayExecutor":
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
            self.started_ray = True
        self.remote = ray.remote(max_calls=1)(run_unit)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            for future in self.futures:
                with contextlib.suppress(Exception):
                    self.ray.cancel(future, force=True)
        if self.started_ray:
            self.ray.shutdown()

    def submit(self, unit: Unit) -> None:
        resources = dict(unit.resources)
        options = {k: resources.pop(k) for k in ("num_cpus", "num_gpus", "memory") if k in resources}
        if "resources" in resources:
            options["resources"] = resources.pop("resources")
        options.setdefault("num_cpus", 1)
        future = self.remote.options(**options).remote(self.command, unit, str(self.out))
        self.futures[future] = unit
        say(f"-> {unit.row} seed {unit.seed}: submitted to Ray ({options})")

    def check(self, units: list[Unit]) -> None:
        """On a local Ray instance, a run asking for more than the machine has would wait forever."""
        if self.address is not None:  # a real cluster may autoscale: let Ray wait for resources
            return
        have = self.ray.cluster_resources()
        for unit in units:
            wants = {"CPU": unit.resources.get("num_cpus", 1), "GPU": unit.resources.get("num_gpus", 0),
                     **(unit.resources.get("resources") or {})}
            for name, amount in wants.items():
                if amount and have.get(name, 0) < amount:
                    raise UsageError(
                        f"row {unit.row!r} asks Ray for {name}={amount} but the local Ray instance has "
                        f"{have.get(name, 0):g}; pass --resources '{{num_cpus: 1}}' (or --address of a cluster)"
                    )

    def busy(self) -> bool:
        return bool(self.futures)

    def wait_one(self) -> tuple[Unit, Outcome]:
        ready, _ = self.ray.wait(list(self.futures), num_returns=1)
        unit = self.futures.pop(ready[0])
        try:
            outcome = self.ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 - a worker that died (OOM, segfault) is a failed run
            outcome = Outcome("failed", error=one_line(err))
        return unit, outcome
