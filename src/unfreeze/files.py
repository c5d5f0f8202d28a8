"""Writing results so that nothing finished is lost and nothing half-written is ever read.

* Every result file is written to a temporary sibling and renamed into place: `os.replace` is atomic on
  POSIX, so a reader sees either the old file, the complete new one, or nothing. Files get the user's
  umask (a colleague in the group can read them), not mkstemp's private 0600.
* `prepare_run_folder` checks an output folder before any work: a folder we can write in, and not a
  finished run unless `--overwrite` is given; it also clears the temporary files that a killed earlier
  process left there.
* `run_lock` holds an output folder for one run at a time (a second process is refused with one line).
* A run's log is held in memory while its inputs are checked (a rejected command writes nothing), goes to
  `run.log` once the run starts, and ends with the error when the run fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unfreeze.errors import UsageError

# Temporary files older than this process belong to a process that died: debris. Newer ones may be a
# concurrent run's work in progress and are left alone.
PROCESS_START = time.time()
# `.<name>.<random>.tmp` (atomic_write_text) and `.<name>.tmp-<random>` (atomic_write_folder).
TEMPORARY_NAME = re.compile(r"^\..+\.tmp(-.+)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_folder(target: Path, files: dict[str, str]) -> None:
    """Write all files into a temporary folder beside `target`, then rename each into place.

    A crash before the renames leaves only the temporary folder's removal to do; every file that is
    visible under its final name is complete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # mkdtemp makes the folder private (0700); once renamed it is the user's folder, so give it the
        # permissions an ordinary mkdir would have.
        os.chmod(staging, 0o777 & ~_umask())
        for name, text in files.items():
            with open(staging / name, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        if not target.exists():
            os.replace(staging, target)  # one atomic rename publishes both files
            return
        for name in files:
            os.replace(staging / name, target / name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target`, replacing what was there.

    Readers see the old folder, no folder (for the instant between two renames), or the new one --
    never a mix or a half-written one. `staging` must sit beside `target` (one file system).
    """
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside `target` (not yet created) to write a whole folder into; when the block ends it
    replaces `target` (`replace_folder`). If the block fails -- a kill included -- the staging folder is removed
    and `target` stays as it was: a reader never sees a half-written folder under its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_json_or_explain(path: str | os.PathLike, fix: str) -> Any:
    """`read_json`, but a cut or corrupt file is a UsageError that names it and says `fix`."""
    try:
        return read_json(path)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}: cut or corrupt); {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path} ({getattr(err, 'strerror', None) or err}); {fix}") from None


# --- output folders, checked before any work ----------------------------------------------------


def check_output_path(path: str | os.PathLike | None, flag: str, kind: str = "folder") -> Path:
    """`path` can be created (or written) as a `kind` ("folder" or "file"); else a one-line UsageError.

    Nothing is created: the nearest existing ancestor must be a folder in which this user can create
    files (tried with an unnamed temporary file, so read-only file systems and ACLs count too).
    """
    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag} is empty: pass a {kind} name")
    target = Path(path).expanduser()
    if target.exists():
        if kind == "folder" and not target.is_dir():
            raise UsageError(f"{flag} {path} exists and is a file, not a folder; pass a folder")
        if kind == "file" and target.is_dir():
            raise UsageError(f"{flag} {path} is a folder; pass a file name")
    ancestor = target if target.is_dir() else target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, so nothing can be created under it")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {ancestor} ({err.strerror or err}); "
                         f"choose a {kind} you can write to") from None
    return target


def is_finished(folder: Path, markers: Sequence[str] = ("metrics.json",)) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in markers)


def prepare_run_folder(out: str | os.PathLike | None, overwrite: bool, flag: str = "--out",
                       markers: Sequence[str] = ("metrics.json",), overwrite_flag: str = "--overwrite") -> Path:
    """Check a run's output folder before any work; returns it (not created yet).

    A folder holding `markers` is a finished run: refused unless `overwrite`, and even then nothing in
    it is deleted here -- the new run replaces its files only once it has succeeded. Temporary files
    that an earlier, killed process left in the folder (or beside it) are removed.
    """
    folder = check_output_path(out, flag, "folder")
    if is_finished(folder, markers) and not overwrite:
        names = "+".join(markers)
        raise UsageError(f"{flag} {out} holds a finished run ({names}); pass {overwrite_flag} to replace it "
                         f"(the old results stay until the new run succeeds), or choose another {flag}")
    remove_stale_temporaries(folder)
    return folder


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete `.*.tmp` / `.*.tmp-*` files and folders older than this process, in `folder` and beside it."""
    candidates: list[Path] = []
    if folder.is_dir():
        candidates += [p for p in folder.iterdir() if TEMPORARY_NAME.match(p.name)]
    if folder.parent.is_dir():
        candidates += list(folder.parent.glob(f".{glob_escape(folder.name)}.tmp-*"))
    removed = []
    for path in candidates:
        try:
            if path.lstat().st_mtime >= PROCESS_START:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # gone already, or not ours to remove: not worth failing a run over
        removed.append(path)
    return removed


# A sweep runs each (row, seed) in `<folder>.partial` and renames it to `<folder>` once it has finished.
PARTIAL_SUFFIX = ".partial"


def published_path(folder: Path) -> Path:
    """Where a run folder's results are read once it is published: a sweep's `seed-1.partial` is `seed-1`."""
    return folder.with_name(folder.name[:-len(PARTIAL_SUFFIX)]) if folder.name.endswith(PARTIAL_SUFFIX) else folder


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# --- one run per output folder -------------------------------------------------------------------


LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(folder: Path, what: str, flag: str = "--out") -> Iterator[Path]:
    """Hold `folder` for one run of `what` (e.g. "classify") until the block ends; a second process is refused.

    The lock is `flock` on `<folder>/.lock`: the kernel drops it when the holder exits, however it ends
    (SIGKILL included), so a killed run never blocks the next. The file names the holder (pid, start time)
    for the refusal, and is removed on release; a folder this call created (parents included) is removed
    too if the run left nothing in it, so a run refused or failed before it wrote leaves no trace.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield folder
        return
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    handle = None
    try:
        handle = _locked_file(folder, fcntl, what, flag)
        yield folder
    finally:
        if handle is not None:
            (folder / LOCK_NAME).unlink(missing_ok=True)  # while still held: no one can take a removed file
            handle.close()
        for path in created:  # deepest first; rmdir removes only empty folders
            try:
                path.rmdir()
            except OSError:
                break


def _locked_file(folder: Path, fcntl, what: str, flag: str):
    """The open lock file of `folder`, locked by this process, with the holder's details written in it."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(handle.read())
            handle.close()
            raise UsageError(f"another {holder.get('what', 'unfreeze')} run is writing into {folder} (pid "
                             f"{holder.get('pid', 'unknown')}, started {holder.get('started', 'at an unknown time')}); "
                             f"wait for it or choose another {flag}") from None
        try:  # the file may have been released and removed between our open and our lock: lock the new one
            current = os.stat(folder / LOCK_NAME).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    handle.truncate(0)
    handle.write(json.dumps({"what": what, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    handle.flush()
    return handle


def _holder(text: str) -> dict:
    """The holder's details from its lock file (empty in the instant between its lock and its write)."""
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


# --- run logs -------------------------------------------------------------------------------------


class _Held(logging.Handler):
    """Keeps records until the run folder may be written (see `start_run_log`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _file_handler(out_dir: str | os.PathLike) -> logging.FileHandler:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(out_dir) / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


def run_logger(out_dir: str | os.PathLike | None, name: str = "unfreeze", hold: bool = False) -> logging.Logger:
    """A logger that prints to stderr and, when a run folder is given, also appends to `run.log`.

    With `hold`, `run.log` is neither created nor written until `start_run_log`: what is said while the
    inputs are checked reaches the file only if the run then starts.
    """
    logger = logging.getLogger(f"{name}.{id(out_dir)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    close_logger(logger)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if out_dir is not None:
        logger.addHandler(_Held() if hold else _file_handler(out_dir))
    return logger


def start_run_log(logger: logging.Logger, out_dir: str | os.PathLike | None) -> None:
    """Create `out_dir` and its `run.log`, beginning with the messages held so far."""
    for held in [h for h in logger.handlers if isinstance(h, _Held)]:
        logger.removeHandler(held)
        if out_dir is None:
            continue
        handler = _file_handler(out_dir)
        for record in held.records:
            handler.handle(record)
        logger.addHandler(handler)


def failure_text(err: BaseException) -> str:
    """How a failure reads in run.log: one line for bad input or an interruption, else the traceback."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(err, UsageError):
        return f"{stamp} FAILED (bad input): {err}\n"
    if isinstance(err, KeyboardInterrupt):
        return f"{stamp} INTERRUPTED: no results written\n"
    lines = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return f"{stamp} FAILED: {type(err).__name__}: {err}\n{lines}"


def log_failure(logger: logging.Logger, err: BaseException) -> None:
    """Append the failure to run.log only (the console gets it from the command line), if the run has
    started; a run rejected while its log was still held writes nothing."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(failure_text(err))
            handler.flush()


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
