"""One run's lifecycle, the same for every command that writes a run folder.

    check the options (the recipe's `check`, before this)  ->  the output folder: refused if it holds a
    finished run and --overwrite is not given  ->  every download the run needs can happen  ->  one run per
    folder at a time (a lock that dies with its process)  ->  a log held in memory while the inputs are read
    ->  `start()`: the folder and run.log exist from here on  ->  the work  ->  `finish(metrics)`: the
    results, metrics.json last, each written atomically.

Bad input found before `start()` leaves nothing behind (no folder, no run.log). A run that fails after it
started ends its run.log with the error and writes no metrics.json; with --overwrite, the old results stay
in place until the new run has finished (so a failed rerun loses nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unfreeze.files import (
    atomic_write_json,
    atomic_write_text,
    close_logger,
    is_finished,
    log_failure,
    prepare_run_folder,
    published_path,
    run_lock,
    run_logger,
    start_run_log,
)
from unfreeze.offline import require_downloads
from unfreeze.tracking import Tracker, check_tracker, open_tracker


@dataclass(frozen=True)
class Tracking:
    """Where a run is tracked: the options of the same names (`--report_to`, `--run_name`, ...)."""

    report_to: str = "none"
    run_name: str | None = None
    run_group: str | None = None
    tracker_dir: str | None = None

    @classmethod
    def of(cls, config: Any) -> "Tracking":
        """The tracking options of any task's config (none for a config without them)."""
        return cls(*(getattr(config, key, default) for key, default in
                     (("report_to", "none"), ("run_name", None), ("run_group", None), ("tracker_dir", None))))


@dataclass
class Run:
    """A run in progress: its folder (None: nothing is written), its log, and whether it replaces a finished
    run (--overwrite)."""

    out: Path | None
    log: logging.Logger
    replacing: bool = False
    started: bool = False
    tracking: Tracking = Tracking()
    tracker: Tracker = field(default_factory=lambda: Tracker("none", None))

    def start(self, config: dict[str, Any] | None = None) -> None:
        """The inputs are read and checked: create the folder, write the held log to run.log and, unless
        this run replaces a finished one (whose config stays with its metrics until `finish`), config.json;
        open the run in its tracker."""
        if self.out is not None:
            start_run_log(self.log, self.out)
            if config is not None and not self.replacing:
                atomic_write_json(self.out / "config.json", config)
        self.started = True
        tracking, folder = self.tracking, self.tracking.tracker_dir or self.out
        if tracking.report_to != "none" and folder is not None:
            name = tracking.run_name or (published_path(self.out).name if self.out is not None else "run")
            self.tracker = open_tracker(tracking.report_to, name, folder, config, group=tracking.run_group)

    def track(self, metrics: dict[str, Any], step: int) -> None:
        """Numbers the loop records at an optimizer step (losses, accuracies), to the run's tracker."""
        self.tracker.log(metrics, step)

    def write_json(self, name: str, data: Any) -> Path | None:
        """A result file of the run, written atomically (nothing when the run has no folder)."""
        return atomic_write_json(self.out / name, data) if self.out is not None else None

    def write_jsonl(self, name: str, rows: list[dict]) -> Path | None:
        """A result file of one JSON record per line, written atomically (nothing when the run has no folder)."""
        if self.out is None:
            return None
        return atomic_write_text(self.out / name, "".join(json.dumps(row, default=str) + "\n" for row in rows))

    def finish(self, metrics: dict[str, Any], config: dict[str, Any] | None = None, file: str = "metrics.json") -> None:
        """The run succeeded: its final metrics to the tracker (`metrics["tracker_run"]` says where), then
        its config.json and `file` (metrics.json) -- last, which marks the run finished."""
        if self.out is not None:
            self.tracker.link("folder", published_path(self.out))
        self.tracker.log_final(metrics)
        if (reference := self.tracker.reference()) is not None:
            metrics["tracker_run"] = reference
        self.tracker.finish()
        if self.out is None:
            return
        if config is not None:
            atomic_write_json(self.out / "config.json", config)
        atomic_write_json(self.out / file, metrics)
        self.log.info(f"results written to {published_path(self.out) / file}")


@contextlib.contextmanager
def run_folder(task: str, out: str | None, overwrite: bool, *, downloads: Sequence = (), flag: str = "--out",
               overwrite_flag: str = "--overwrite", markers: Sequence[str] = ("metrics.json",),
               log_file: bool = True, main_process: bool = True, tracking: Tracking = Tracking()) -> Iterator[Run]:
    """The lifecycle around a run's work (see the module docstring); `out` None runs without a folder.

    `markers`: the files that make a finished run; `log_file` False keeps the log on the console only;
    with several processes (`accelerate launch`) only the main one locks the folder, writes and tracks.
    """
    check_tracker(tracking.report_to)  # a tracker that is not installed: one line naming the extra, no work
    folder = prepare_run_folder(out, overwrite, flag, markers, overwrite_flag) if out is not None else None
    require_downloads(downloads)
    writes = folder is not None and main_process
    lock = run_lock(folder, task, flag) if writes else contextlib.nullcontext()
    with lock:
        log = run_logger(folder if writes and log_file else None, f"unfreeze.{task}", hold=True)
        if not main_process:
            log.setLevel(logging.WARNING)
        run = Run(folder if writes else None, log, replacing=writes and is_finished(folder, markers),
                  tracking=tracking if main_process else Tracking())
        try:
            yield run
        except BaseException as err:
            log_failure(log, err)  # run.log ends with what went wrong (only once the run has started)
            run.tracker.finish(failed=True)
            raise
        finally:
            close_logger(log)
