"""`unfreeze sweep FILE`: run every (row, seed) of a sweep file, resumably.

Layout of the output folder (`--out`):

    sweep.json                      the resolved sweep: rows, options, published values, columns
    failed.json                     (row, seed) -> error, for runs that failed or were skipped
    runs/<row>/seed-<s>/            a finished run: metrics.json, config.json, run.log, ...
    runs/<row>/seed-<s>.partial/    a run in progress (or one that was killed / failed)

A run works in its own `seed-<s>.partial` folder and is renamed to `seed-<s>` only once its
`metrics.json` exists. A rename is atomic, so a result is finished if and only if `seed-<s>/metrics.json`
exists: killing the sweep at any moment (SIGKILL included) loses nothing finished, and starting it
again runs exactly the (row, seed) pairs that have no finished result. A partial folder never counts
as a result; when its (row, seed) runs again with the same config it is reused, so a recipe that
checkpoints continues where it was killed, and otherwise it is cleared.

Backends: `local` runs one after another in this process; `ray` makes each (row, seed) a Ray task
asking for the row's `resources`, so a sweep spreads over a cluster (`--address`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from unfreeze.config import config_from_mapping
from unfreeze.errors import UsageError
from unfreeze.files import (
    atomic_write_json,
    check_output_path,
    read_json,
    read_json_or_explain,
)
from unfreeze.sweep.config import SweepConfig
from unfreeze.tracking import check_tracker
from unfreeze.sweep.executors import LocalExecutor, RayExecutor, Unit, final_dir, say
from unfreeze.sweep.spec import (
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


def run(args: SweepConfig) -> int:
    if args.address and args.backend != "ray":
        raise UsageError("--address needs --backend ray")
    overrides = parse_overrides(args.set)
    seeds = parse_seeds(args.seeds)
    resources = parse_resources(args.resources, "--resources") if args.resources else None
    sweep = load_sweep(args.file, overrides=overrides, seeds=seeds, resources=resources)
    rows = select_rows(sweep.rows, args.rows)
    out = check_output_path(args.out if args.out is not None else Path("runs") / Path(args.file).stem, "--out")
    for name in ("sweep.json", "failed.json"):  # a cut record of an earlier sweep in --out: one line, not a traceback
        if (out / name).is_file():
            read_json_or_explain(out / name, f"delete it (finished runs under {out / 'runs'} are kept), or use another --out")
    features = out / "features" if args.feature_cache else None
    check_tracker(args.report_to)
    check_rows(sweep, rows, out)
    return run_sweep(sweep, rows, out, backend=args.backend, address=args.address, features=features,
                     report_to=args.report_to)


def check_rows(sweep: Sweep, rows: list[Row], out: Path) -> None:
    """Every check a run makes before its work, for every row that still has a run to make, before the first
    run starts: a bad value, a missing file or a data set that cannot train fails the sweep with one line
    naming the row, and nothing is written. A row that starts from another row's output (`init_from`) is
    checked without its model, which does not exist yet."""
    command = sweep.command
    if command.check is None:
        return
    for row in rows:
        seeds = [seed for seed in sweep.seeds if not is_finished(out, row.name, seed)]
        if not seeds:
            continue
        options = {**row.options, command.out_option: str(final_dir(out, row.name, seeds[0])),
                   command.seed_option: seeds[0]}
        config = config_from_mapping(command.config, options, f"row {row.name!r}")
        try:
            command.check(config, model_from_dependency=row.init_from is not None)
        except UsageError as err:
            raise UsageError(f"row {row.name!r}: {err}") from None


# --- state on disk ------------------------------------------------------------------------------


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


# --- the sweep --------------------------------------------------------------------------------------


def plan(sweep: Sweep, rows: list[Row], out: Path, features: Path | None = None,
         report_to: str = "none") -> tuple[list[Unit], int]:
    """Units without a finished result, dependencies first; and how many are already done.

    With `features`, every run of a command that takes `feature_cache_dir` (classify) shares that folder's
    frozen-prefix caches unless its row sets the option itself: rows and seeds that freeze the same prefix
    of the same network on the same data compute it once. Every run of a command that is tracked goes to
    `report_to` in the sweep's folder, named `<sweep>/<row>/seed-<s>` and grouped by the sweep (a run's own
    folder is renamed when it finishes, so the sweep's folder keeps the store).
    """
    units, done = [], 0
    fields = {f.name for f in dataclasses.fields(sweep.command.config)}
    shares = features is not None and "feature_cache_dir" in fields
    for row in dependency_order(rows):
        for seed in sweep.seeds:
            if is_finished(out, row.name, seed):
                done += 1
                continue
            options = dict(row.options)
            if shares and "feature_cache_dir" not in options:
                options["feature_cache_dir"] = str(features.resolve())
            if "report_to" in fields:
                tracking = {"report_to": report_to, "run_name": f"{out.resolve().name}/{row.name}/seed-{seed}",
                            "run_group": out.resolve().name, "tracker_dir": str(out.resolve())}
                options = {**tracking, **options}  # what a row sets itself wins
            units.append(Unit(row.name, seed, options, row.init_from, dict(row.resources)))
    return units, done


def run_sweep(sweep: Sweep, rows: list[Row], out: Path, backend: str = "local", address: str | None = None,
              features: Path | None = None, report_to: str = "none") -> int:
    with sweep_lock(out):
        write_sweep_json(sweep, rows, out)
        units, done = plan(sweep, rows, out, features, report_to)
        total = len(units) + done
        say(f"sweep {Path(sweep.path).name}: {len(rows)} row(s) x {len(sweep.seeds)} seed(s) = {total} run(s); "
            f"{done} already finished, {len(units)} to run ({backend}) -> {out}")
        if not units:
            return 0
        executor = LocalExecutor(sweep.command, out) if backend == "local" else RayExecutor(sweep.command, out, address)
        with executor, overall_progress(total, done) as bar:
            executor.check(units)
            counts = drive(units, executor, out, total, done, progressed=lambda: bar.update(1))
    say(f"sweep done: {counts['finished']} finished, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(plus {done} finished before); table: unfreeze report {out}")
    return 1 if counts["failed"] or counts["skipped"] else 0


def overall_progress(total: int, done: int):
    """One line for the whole sweep above each run's own bar: runs done of rows x seeds, the time so far, and
    the time left at the pace of the runs finished so far."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="sweep", unit="run", position=0, dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} runs [{elapsed} so far, ~{remaining} left]")


def drive(units: list[Unit], executor: Any, out: Path, total: int, done: int,
          progressed: Callable[[], Any] = lambda: None) -> dict[str, int]:
    """Submit units whose dependency finished; skip units whose dependency failed; record outcomes;
    `progressed()` after each (the overall progress line)."""
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
                progressed()
        if not executor.busy():
            if todo:  # only reachable through a bug in the dependency bookkeeping
                raise RuntimeError(f"sweep stalled with {len(todo)} unit(s) waiting")
            break
        unit, outcome = executor.wait_one()
        key = unit_key(unit.row, unit.seed)
        state[key] = outcome.status
        position += 1
        progressed()
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
