"""`unfreeze sweep FILE`: run every (row, seed) of a sweep file, resumably.

Layout of the output folder (`--out`):

    sweep.json                      the resolved sweep: rows, options, published values, columns
    failed.json                     (row, seed) -> error, for runs that failed or were skipped
    runs/<row>/seed-<s>/            a finished run: metrics.json, config.json, run.log, ...
    runs/<row>/seed-<s>.partial-*/  a run in progress (or one that was killed / failed)

A run works in its own `.partial-<uuid>` folder and is renamed to `seed-<s>` only once its
`metrics.json` exists. A rename is atomic, so a result is finished if and only if `seed-<s>/metrics.json`
exists: killing the sweep at any moment (SIGKILL included) loses nothing finished, and starting it
again runs exactly the (row, seed) pairs that have no finished result. Leftover `.partial-*` folders
never count and are removed when that (row, seed) runs again.

Backends: `local` runs one after another in this process; `ray` makes each (row, seed) a Ray task
asking for the row's `resources`, so a sweep spreads over a cluster (`--address`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from unfreeze.config import config_from_mapping
from unfreeze.errors import UsageError
from unfreeze.files import atomic_write_json, read_json
from unfreeze.sweep_commands import Command
from unfreeze.sweep_file import (
    Row,
    Sweep,
    dependency_order,
    load_sweep,
    parse_overrides,
    parse_resources,
    parse_seeds,
    select_rows,
)

SWEEP_FORMAT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="sweep file (YAML), e.g. experiments/spam_additional.yaml")
    parser.add_argument("--rows", default=None,
                        help="rows to run: numbers, ranges and names, e.g. 1-3 or 1,4,7 or last_layer (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 123,124,125 "
                        "(default: the file's 'seeds', else the command's default seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an option in every row (repeatable), e.g. --set num_epochs=1; "
                        "ROWS:key=value overrides it in the matching rows only, e.g. 'step1_*:data=...'")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: one run after another in this process; ray: one Ray task per run (default: local)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address for --backend ray (default: start a local Ray instance)")
    parser.add_argument("--resources", default=None,
                        help="replace every row's Ray resources, e.g. '{num_cpus: 1}' on a machine without GPUs")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<sweep file name>)")


def run(args: argparse.Namespace) -> int:
    if args.address and args.backend != "ray":
        raise UsageError("--address needs --backend ray")
    overrides = parse_overrides(args.overrides)
    seeds = parse_seeds(args.seeds)
    resources = parse_resources(args.resources, "--resources") if args.resources else None
    sweep = load_sweep(args.file, overrides=overrides, seeds=seeds, resources=resources)
    rows = select_rows(sweep.rows, args.rows)
    out = Path(args.out or Path("runs") / Path(args.file).stem)
    return run_sweep(sweep, rows, out, backend=args.backend, address=args.address)


# --- state on disk ------------------------------------------------------------------------------


def final_dir(out: Path, row: str, seed: int) -> Path:
    return out / "runs" / row / f"seed-{seed}"


def is_finished(out: Path, row: str, seed: int) -> bool:
    return (final_dir(out, row, seed) / "metrics.json").is_file()


def unit_key(row: str, seed: int) -> str:
    return f"{row}/seed-{seed}"


def read_failures(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "failed.json"
    return read_json(path) if path.is_file() else {}


def write_sweep_json(sweep: Sweep, selected: list[Row], out: Path) -> None:
    """Record the resolved sweep; refuse to mix results made with different options."""
    path = out / "sweep.json"
    previous = read_json(path) if path.is_file() else None
    names_before: list[str] = []
    seeds_before: list[int] = []
    if previous is not None:
        if previous.get("command") != sweep.command.name:
            raise UsageError(f"{out} holds a {previous.get('command')!r} sweep; use another --out for "
                             f"this {sweep.command.name!r} sweep")
        old_rows = {r["name"]: r for r in previous.get("rows", [])}
        for row in sweep.rows:
            old = old_rows.get(row.name)
            if old is None or old["config"] == row.config or not _has_results(out, row.name):
                continue
            changed = sorted(k for k in set(old["config"]) | set(row.config) if old["config"].get(k) != row.config.get(k))
            diff = ", ".join(f"{k}: {old['config'].get(k)!r} -> {row.config.get(k)!r}" for k in changed[:4])
            raise UsageError(
                f"{out} has results of row {row.name!r} made with other options ({diff}); "
                "use another --out, or delete that row's folder to rerun it"
            )
        names_before = previous.get("selected", [])
        seeds_before = previous.get("seeds", [])
    data = {
        "format": SWEEP_FORMAT,
        "command": sweep.command.name,
        "sweep_file": sweep.path,
        "description": sweep.description,
        "source": sweep.source,
        "main_metric": sweep.command.main_metric,
        "columns": [vars(c) for c in sweep.command.columns],
        "overrides": sweep.overrides,
        "seeds": sorted(set(seeds_before) | set(sweep.seeds)),
        "selected": [r.name for r in sweep.rows if r.name in set(names_before) | {s.name for s in selected}],
        "rows": [r.to_json() for r in sweep.rows],
    }
    atomic_write_json(path, data)


def _has_results(out: Path, row: str) -> bool:
    folder = out / "runs" / row
    return folder.is_dir() and any((d / "metrics.json").is_file() for d in folder.glob("seed-*"))


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep process per output folder (the lock dies with the process, SIGKILL included)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"another sweep is running in {out}; wait for it or use another --out") from None
        yield


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


def run_unit(command: Command, unit: Unit, out: str) -> Outcome:
    """Run one (row, seed) in a fresh partial folder and publish it by renaming; never raises an Exception.

    Also what a Ray worker executes, so it only takes picklable arguments and imports lazily.
    """
    out_path = Path(out)
    final = final_dir(out_path, unit.row, unit.seed)
    if (final / "metrics.json").is_file():
        return Outcome("finished", metrics=read_json(final / "metrics.json"))
    for stale in final.parent.glob(f"seed-{unit.seed}.partial-*"):  # leftovers of killed/failed attempts
        shutil.rmtree(stale, ignore_errors=True)
    partial = final.parent / f"seed-{unit.seed}.partial-{uuid.uuid4().hex[:12]}"
    partial.mkdir(parents=True)
    options = dict(unit.options)
    options[command.out_option] = str(partial)
    options[command.seed_option] = unit.seed
    if unit.init_from is not None:
        source = final_dir(out_path, unit.init_from, unit.seed)
        options[command.init_option] = str(source / command.init_subdir if command.init_subdir else source)
    start = time.perf_counter()
    try:
        config = config_from_mapping(command.load_config_class(), options, f"row {unit.row!r}")
        metrics = command.load_run_function()(config)
        if not (partial / "metrics.json").is_file():
            if not isinstance(metrics, dict):
                raise RuntimeError(f"{command.run_function} wrote no metrics.json and returned {type(metrics).__name__}")
            atomic_write_json(partial / "metrics.json", metrics)
        metrics = read_json(partial / "metrics.json")
    except Exception as err:  # noqa: BLE001 - a failing row is recorded and the sweep goes on
        (partial / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        return Outcome("failed", error=one_line(err), seconds=time.perf_counter() - start, log=str(partial))
    publish(partial, final)
    return Outcome("finished", metrics=metrics, seconds=time.perf_counter() - start)


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


# --- the sweep --------------------------------------------------------------------------------------


def plan(sweep: Sweep, rows: list[Row], out: Path) -> tuple[list[Unit], int]:
    """Units without a finished result, dependencies first; and how many are already done."""
    units, done = [], 0
    for row in dependency_order(rows):
        for seed in sweep.seeds:
            if is_finished(out, row.name, seed):
                done += 1
                continue
            units.append(Unit(row.name, seed, dict(row.options), row.init_from, dict(row.resources)))
    return units, done


def run_sweep(sweep: Sweep, rows: list[Row], out: Path, backend: str = "local", address: str | None = None) -> int:
    with sweep_lock(out):
        write_sweep_json(sweep, rows, out)
        units, done = plan(sweep, rows, out)
        total = len(units) + done
        say(f"sweep {Path(sweep.path).name}: {len(rows)} row(s) x {len(sweep.seeds)} seed(s) = {total} run(s); "
            f"{done} already finished, {len(units)} to run ({backend}) -> {out}")
        if not units:
            return 0
        executor = LocalExecutor(sweep.command, out) if backend == "local" else RayExecutor(sweep.command, out, address)
        with executor:
            executor.check(units)
            counts = drive(units, executor, out, total, done)
    say(f"sweep done: {counts['finished']} finished, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(plus {done} finished before); table: unfreeze report {out}")
    return 1 if counts["failed"] or counts["skipped"] else 0


def drive(units: list[Unit], executor: Any, out: Path, total: int, done: int) -> dict[str, int]:
    """Submit units whose dependency finished; skip units whose dependency failed; record outcomes."""
    failures = read_failures(out)
    counts = {"finished": 0, "failed": 0, "skipped": 0}
    state: dict[str, str] = {}  # unit key -> "finished" | "failed" | "skipped" | "running"
    todo = list(units)
    position = done

    def dependency_state(unit: Unit) -> str:
        if unit.init_from is None or is_finished(out, unit.init_from, unit.seed):
            return "ready"
        dep = state.get(unit_key(unit.init_from, unit.seed))
        if dep in ("failed", "skipped"):
            return "blocked"
        if dep is None and not any(u.row == unit.init_from and u.seed == unit.seed for u in todo):
            return "blocked"  # not finished and not scheduled: cannot happen with select_rows
        return "wait"

    while todo or executor.busy():
        for unit in list(todo):
            verdict = dependency_state(unit)
            if verdict == "ready":
                todo.remove(unit)
                state[unit_key(unit.row, unit.seed)] = "running"
                executor.submit(unit)
            elif verdict == "blocked":
                todo.remove(unit)
                key = unit_key(unit.row, unit.seed)
                state[key] = "skipped"
                counts["skipped"] += 1
                position += 1
                reason = f"skipped: dependency {unit.init_from} seed {unit.seed} did not finish"
                failures[key] = {"row": unit.row, "seed": unit.seed, "status": "skipped", "error": reason,
                                 "time": time.strftime("%Y-%m-%d %H:%M:%S")}
                atomic_write_json(out / "failed.json", failures)
                say(f"[{position}/{total}] {unit.row} seed {unit.seed}: {reason}")
        if not executor.busy():
            if todo:  # only reachable through a bug in the dependency bookkeeping
                raise RuntimeError(f"sweep stalled with {len(todo)} unit(s) waiting")
            break
        unit, outcome = executor.wait_one()
        key = unit_key(unit.row, unit.seed)
        state[key] = outcome.status
        position += 1
        if outcome.status == "finished":
            counts["finished"] += 1
            if failures.pop(key, None) is not None:
                atomic_write_json(out / "failed.json", failures)
            say(f"[{position}/{total}] {unit.row} seed {unit.seed}: finished in {outcome.seconds:.1f}s")
        else:
            counts["failed"] += 1
            failures[key] = {"row": unit.row, "seed": unit.seed, "status": "failed", "error": outcome.error,
                             "log": outcome.log, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            atomic_write_json(out / "failed.json", failures)
            say(f"[{position}/{total}] {unit.row} seed {unit.seed}: FAILED: {outcome.error}")
    return counts


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LocalExecutor:
    """Runs units one after another in this process, in submission order."""

    def __init__(self, command: Command, out: Path):
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

    def __init__(self, command: Command, out: Path, address: str | None):
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
