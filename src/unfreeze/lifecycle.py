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
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unfreeze.files import (
    atomic_write_json,
    close_logger,
    is_finished,
    log_failure,
    prepare_run_folder,
    run_lock,
    run_logger,
    start_run_log,
)
from unfreeze.offline import require_downloads


@dataclass
class Run:
    """A run in progress: its folder (None: nothing is written), its log, and whether it replaces a finished
    run (--overwrite)."""

    out: Path | None
    log: logging.Logger
    replacing: bool = False
    started: bool = False

    def start(self, config: dict[str, Any] | None = None) -> None:
        """The inputs are read and checked: create the folder, write the held log to run.log and, unless
        this run replaces a finished one (whose config stays with its metrics until `finish`), config.json."""
        if self.out is not None:
            start_run_log(self.log, self.out)
            if config is not None and not self.replacing:
                atomic_write_json(self.out / "config.json", config)
        self.started = True

    def write_json(self, name: str, data: Any) -> Path | None:
        """A result file of the run, written atomically (nothing when the run has no folder)."""
        return atomic_write_json(self.out / name, data) if self.out is not None else None

    def finish(self, metrics: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """The run succeeded: its config.json, then metrics.json -- last, which marks the run finished."""
        if self.out is None:
            return
        if config is not None:
            atomic_write_json(self.out / "config.json", config)
        atomic_write_json(self.out / "metrics.json", metrics)
        self.log.info(f"results written to {self.out / 'metrics.json'}")


@contextlib.contextmanager
def run_folder(task: str, out: str | None, overwrite: bool, *, downloads: Sequence = (), flag: str = "--out",
               overwrite_flag: str = "--overwrite", markers: Sequence[str] = ("metrics.json",),
               log_file: bool = True, main_process: bool = True) -> Iterator[Run]:
    """The lifecycle around a run's work (see the module docstring); `out` None runs without a folder.

    `markers`: the files that make a finished run; `log_file` False keeps the log on the console only;
    with several processes (`accelerate launch`) only the main one locks the folder and writes.
    """
    folder = prepare_run_folder(out, overwrite, flag, markers, overwrite_flag) if out is not None else None
    require_downloads(downloads)
    writes = folder is not None and main_process
    lock = run_lock(folder, f"unfreeze {task}", flag) if writes else contextlib.nullcontext()
    with lock:
        log = run_logger(folder if writes and log_file else None, f"unfreeze.{task}", hold=True)
        if not main_process:
            log.setLevel(logging.WARNING)
        run = Run(folder if writes else None, log, replacing=writes and is_finished(folder, markers))
        try:
            yield run
        except BaseException as err:
            log_failure(log, err)  # run.log ends with what went wrong (only once the run has started)
            raise
        finally:
            close_logger(log)
