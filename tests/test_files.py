"""`unfreeze.files`: output folders checked before work, finished runs kept, debris cleared, logs that
record failures, and result files readable by the user's group."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unfreeze import files
from unfreeze.errors import UsageError


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_result_files_follow_the_umask(tmp_path, umask):
    umask(0o022)
    files.atomic_write_json(tmp_path / "a.json", {"x": 1})
    umask(0o027)
    files.atomic_write_text(tmp_path / "b.txt", "x")
    files.atomic_write_folder(tmp_path / "folder", {"train.json": "[]"})
    assert mode(tmp_path / "a.json") == 0o644  # mkstemp alone gives 0600: a colleague could not read it
    assert mode(tmp_path / "b.txt") == 0o640
    assert mode(tmp_path / "folder") == 0o750 and mode(tmp_path / "folder" / "train.json") == 0o640


def test_a_finished_run_is_refused_without_overwrite_and_kept_with_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test_acc": 0.9}')
    with pytest.raises(UsageError, match="--overwrite"):
        files.prepare_run_folder(out, overwrite=False)
    with pytest.raises(UsageError, match="--overwrite"):
        files.prepare_run_folder(out / ".." / "run", overwrite=False)
    assert files.prepare_run_folder(out, overwrite=True) == out
    assert (out / "metrics.json").read_text() == '{"test_acc": 0.9}'  # nothing deleted before the new run
    # A folder with only some of the markers is not finished.
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.json").write_text("[]")
    assert files.prepare_run_folder(tmp_path / "half", False, markers=("train.json", "test.json"))


@pytest.mark.parametrize("name, message", [
    ("", "is empty"),
    ("a_file", "is a file, not a folder"),
    ("a_file/below", "a_file is a file"),
    ("/proc/unfreeze-cannot-write-here", "cannot write in /proc"),
])
def test_unusable_output_folders_are_named_and_nothing_is_created(tmp_path, name, message):
    (tmp_path / "a_file").write_text("x")
    before = sorted(tmp_path.iterdir())
    target = name if name.startswith("/") or not name else str(tmp_path / name)
    with pytest.raises(UsageError, match=message) as caught:
        files.prepare_run_folder(target, overwrite=False, flag="--out")
    assert str(caught.value).startswith("--out") and "\n" not in str(caught.value)
    assert sorted(tmp_path.iterdir()) == before


def test_output_file_checks(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        files.check_output_path(tmp_path / "dir.png", "--plot", "file")
    assert files.check_output_path(tmp_path / "new" / "deeper" / "x.png", "--plot", "file").name == "x.png"
    assert not (tmp_path / "new").exists()


def _age(path: Path, seconds_before_start: float) -> None:
    stamp = files.PROCESS_START - seconds_before_start
    os.utime(path, (stamp, stamp))


def test_stale_temporaries_of_dead_processes_are_removed_fresh_ones_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".metrics.json.k2j3h4.tmp", out / ".run.tmp-ab12", tmp_path / ".run.tmp-zz99"]
    stale[0].write_text("half")
    stale[1].mkdir()
    (stale[1] / "metrics.json").write_text("{}")
    stale[2].mkdir()
    fresh = out / ".config.json.newer.tmp"  # a concurrent, younger process may be writing it right now
    fresh.write_text("in progress")
    keep = [out / "metrics.json.tmp", out / "run.log", tmp_path / ".other.tmp-1234", out / ".lock"]
    for path in keep:
        path.write_text("mine")
    for path in stale + keep:
        _age(path, 60)
    files.prepare_run_folder(out, overwrite=False)
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and all(path.exists() for path in keep)


def test_held_log_writes_nothing_until_the_run_starts_then_records_its_failure(tmp_path, capsys):
    out = tmp_path / "run"
    log = files.run_logger(out, "test.held", hold=True)
    log.info("checking inputs")
    files.log_failure(log, UsageError("--lr must be positive"))  # rejected before the run started
    assert not out.exists()
    log.info("still checking")
    files.start_run_log(log, out)
    log.info("training")
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as err:
        files.log_failure(log, err)
    files.close_logger(log)
    text = (out / "run.log").read_text()
    assert [line.split(" ", 2)[2] for line in text.splitlines()[:3]] == ["checking inputs", "still checking", "training"]
    assert "FAILED: RuntimeError: CUDA out of memory" in text and "Traceback" in text
    assert "--lr" not in text
    assert capsys.readouterr().err.count("CUDA") == 0  # the console gets the error from the CLI, once


def _finished(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text('{"old": 1}')
    (out / "run.log").write_text("old log\n")


def test_cut_json_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"test_acc": 0.')
    with pytest.raises(UsageError, match=r"metrics\.json is not valid JSON .*; rerun it"):
        files.read_json_or_explain(path, "rerun it")


# --- one run per output folder (issue 22, item 1): two real processes -------------------------------------

LOCK_HOLDER = """
import sys, time
from pathlib import Path
from unfreeze.errors import UsageError
from unfreeze.files import run_lock

folder, mode = Path(sys.argv[1]), sys.argv[2]
try:
    with run_lock(folder, "classify"):
        print("locked", flush=True)
        if mode == "hold":
            time.sleep(300)
        elif mode == "write":
            (folder / "metrics.json").write_text("{}")
        elif mode == "fail":
            raise RuntimeError("failed before writing anything")
except UsageError as err:
    print(f"unfreeze classify: error: {err}", file=sys.stderr)
    sys.exit(2)
"""


def _lock_run(folder: Path, mode: str):
    """One process that takes the run lock of `folder`, then holds it, writes, fails or just ends."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", LOCK_HOLDER, str(folder), mode], capture_output=True, text=True,
                          timeout=60)


def test_a_second_run_is_refused_while_the_first_holds_the_folder_and_a_killed_holder_blocks_nobody(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out), "hold"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked", first.stderr.read()
        second = _lock_run(out, "write")
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and "locked" not in second.stdout and len(lines) == 1, second.stderr
        assert f"another classify run is writing into {out} (pid {first.pid}, started " in lines[0]
        assert lines[0].endswith("wait for it or choose another --out") and "Traceback" not in second.stderr
        assert not (out / "metrics.json").exists()  # the refused run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel releases the lock
        first.wait(timeout=30)
        first.stdout.close()
        first.stderr.close()
    third = _lock_run(out, "write")
    assert third.returncode == 0 and third.stdout.strip() == "locked", third.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # the lock file goes with its holder


@pytest.mark.parametrize("mode,code", [("nothing", 0), ("fail", 1)])
def test_a_run_that_ends_before_writing_leaves_no_folder_behind(tmp_path, mode, code):
    result = _lock_run(tmp_path / "new" / "deeper" / "run", mode)
    assert result.returncode == code and result.stdout.strip() == "locked", result.stderr
    assert list(tmp_path.iterdir()) == []  # the folders it created (parents too) are gone
    existing = tmp_path / "done"
    existing.mkdir()
    (existing / "metrics.json").write_text('{"test_acc": 0.9}')
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    assert _lock_run(existing, mode).returncode == code
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before  # an existing folder stays as it was
