"""`unfreeze sweep`: sweep files, bad input, failures, dependencies, resume after SIGKILL, Ray.

Most tests use a tiny fake command (defined here, registered by a fixture) that sleeps and writes
metrics, so the runner's mechanics are tested in milliseconds; one test runs the real `classify`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from unfreeze.cli import main
from unfreeze.registry import TASKS, Column, Task, register_task
from unfreeze.config import config_from_mapping, option
from unfreeze.files import atomic_write_json
from unfreeze.sweep.spec import load_sweep, select_rows
from unfreeze.recipes.classify.config import ClassifyConfig

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"


# --- a fake command: sleeps, then writes metrics --------------------------------------------------


@dataclass
class FakeConfig:
    value: float = 0.5
    """the score this run reports (plus seed/100)"""
    sleep: float = 0.0
    """seconds to sleep before finishing"""
    fail: bool = False
    """raise an error instead of finishing"""
    interrupt: bool = False
    """raise KeyboardInterrupt (as Ctrl-C would)"""
    log: str | None = option(None, path=True)
    """file that gets one line per started run"""
    model: str | None = option(None, path=True, init_subdir="final")
    """where to start from (set by init_from)"""
    seed: int = option(0, role="seed")
    """seed"""
    out: str | None = option(None, path=True, role="out")
    """run folder"""


def fake_run(cfg: FakeConfig) -> dict:
    out = Path(cfg.out)
    if cfg.log:
        with open(cfg.log, "a", encoding="utf-8") as handle:
            handle.write(f"{out.parent.name} {cfg.seed} {cfg.model}\n")
    (out / "started").write_text("", encoding="utf-8")
    time.sleep(cfg.sleep)
    if cfg.fail:
        raise RuntimeError(f"boom in {out.parent.name}\nsecond line of the message")
    if cfg.interrupt:
        raise KeyboardInterrupt
    if cfg.model:
        assert (Path(cfg.model).parent / "metrics.json").is_file(), "the dependency must be finished"
    metrics = {"score": round(cfg.value + cfg.seed / 100, 6), "trainable_params": 7, "init": cfg.model}
    (out / "final").mkdir(exist_ok=True)  # what an sft run leaves for its dependants
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


FAKE = Task(
    name="fake",
    summary="a fake command for the sweep's tests",
    config=FakeConfig,
    run=fake_run,
    main_metric="score",
    columns=(
        Column("Value", "value", "option", "float2"),
        Column("Score", "score", "metric", "float4"),
        Column("Trainable params", "trainable_params", "metric", "int"),
    ),
)


def register() -> None:
    register_task(FAKE)


@pytest.fixture(autouse=True)
def fake_command():
    register()
    yield
    TASKS.pop("fake", None)


def write_sweep(path: Path, rows: list[dict], **top) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"command": "fake", **top, "rows": rows}, sort_keys=False), encoding="utf-8")
    return path


def finished(out: Path) -> dict[tuple[str, int], dict]:
    results = {}
    for metrics in (out / "runs").glob("*/seed-*/metrics.json"):
        match = re.fullmatch(r"seed-(\d+)", metrics.parent.name)
        if match:
            results[(metrics.parent.parent.name, int(match.group(1)))] = json.loads(metrics.read_text())
    return results


def log_lines(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines()]


# --- the shipped sweep files ----------------------------------------------------------------------------


def test_spam_sweep_file_rows_resolve_to_classify_options():
    sweep = load_sweep(ROOT / "experiments" / "spam_additional.yaml")
    assert sweep.command.name == "classify"
    assert len(sweep.rows) == 19
    assert len({r.name for r in sweep.rows}) == 19
    for row in sweep.rows:
        config = config_from_mapping(ClassifyConfig, row.options, row.name)
        assert config.seed == 123 and config.out is None
        assert set(row.published) == {"train_acc", "val_acc", "test_acc", "train_time_s", "device"}, row.name
        assert all(0.0 < row.published[k] <= 1.0 for k in ("train_acc", "val_acc", "test_acc"))
    by_name = {r.name: r for r in sweep.rows}
    assert by_name["lora"].options == {"trainable_layers": "lora", "lora_rank": 16, "lora_alpha": 8}
    assert by_name["no_padding_accum8"].options == {"no_padding": True, "batch_size": 1, "accumulation_steps": 8}
    assert by_name["mean_pooling"].options == {"average_embeddings": True}
    assert by_name["gpt2_xl_all"].config["model_size"] == "gpt2-xl (1558M)"
    assert by_name["gpt2_xl_all"].config["trainable_layers"] == "all"
    assert by_name["reference"].options == {}


def test_spam_sweep_published_numbers_match_the_seed_table():
    seeds = list((SHARED / "seeds").glob("000_*.txt"))
    if not seeds:
        pytest.skip("../shared/seeds/000_*.txt not present")
    table_rows = [line for line in seeds[0].read_text().splitlines() if re.match(r"^\| \d+ +\|", line)]
    sweep = load_sweep(ROOT / "experiments" / "spam_additional.yaml")
    assert len(table_rows) == 10
    for line, row in zip(table_rows, sweep.rows[:10]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        train, test, val, minutes = cells[6], cells[7], cells[8], cells[9]
        assert row.published["train_acc"] == pytest.approx(float(train.rstrip("%")) / 100), row.name
        assert row.published["test_acc"] == pytest.approx(float(test.rstrip("%")) / 100), row.name
        assert row.published["val_acc"] == pytest.approx(float(val.rstrip("%")) / 100), row.name
        assert row.published["train_time_s"] == pytest.approx(float(minutes.split()[0]) * 60), row.name


def test_pause_sweep_file_rows_resolve_to_sft_options():
    try:
        from unfreeze.recipes.sft.config import SFTConfig
    except ImportError as err:
        pytest.skip(f"unfreeze.recipes.sft.recipe is not available yet ({err}); the pause sweep cannot be checked")
    sweep = load_sweep(ROOT / "experiments" / "pause_warmup.yaml")
    assert sweep.command.name == "sft"
    assert len(sweep.rows) == 21  # the table's 20, and the mis-set row as its name means (unpublished)
    for row in sweep.rows:
        config_from_mapping(SFTConfig, row.options, row.name)
        assert ("test_accuracy" in row.published) == (row.name != AS_NAMED), row.name
    starts = [r for r in sweep.rows if r.init_from == "step1_sft"]
    assert len(starts) == 19
    switches = {(r.config["unfreeze_pause_embedding"], r.config["unfreeze_pause_head"], r.config["unfreeze_lm_head"],
                 r.config["unfreeze_lm_embeddings"], r.config["lora"]) for r in starts}
    assert len(switches) == 18  # 18 distinct combinations
    assert sweep.row("step1_sft").init_from is None
    assert sweep.row("baseline_peft_2_epochs").config["num_epochs"] == 2
    # a quick run's model options reach the rows that build a model, not those that start from step1_sft
    from unfreeze.sweep.spec import parse_overrides

    quick = load_sweep(ROOT / "experiments" / "pause_warmup.yaml",
                       overrides=parse_overrides(["model=gpt2", "weights=random", "tokenizer=tok",
                                                  "prompt_column=no", "test_limit=4", "train_limit=null"]))
    assert quick.row("step1_sft").options["weights"] == "random"
    assert quick.row("sft").options["prompt_column"] == "no"  # not YAML's False
    assert quick.row("sft").options["test_limit"] == 4 and quick.row("sft").options["train_limit"] is None
    assert "weights" not in quick.row("sft").options and "model" not in quick.row("sft").options


# The reference's config of this row trained the pause embedding, not the head (DESIGN.md): the published
# number sits on the row that runs what the reference ran; a second row runs what the name means.
AS_NAMED = "sft_fr_pembed_unfr_lm_head_embed_peft"
AS_RUN = {AS_NAMED: ("sft_fr_pembed_unfr_lm_head_embed_peft_as_run", (True, False, True, True, True))}


def test_pause_sweep_matches_the_seed_tables():
    pytest.importorskip("unfreeze.recipes.sft.recipe", reason="unfreeze.recipes.sft.recipe is not available yet")
    seeds = list((SHARED / "seeds").glob("003_*.txt"))
    if not seeds:
        pytest.skip("../shared/seeds/003_*.txt not present")
    lines = [line for line in seeds[0].read_text().splitlines() if re.match(r"^\| (sft|baseline)", line)]
    cells = [[c.strip().strip("*`").strip() for c in line.strip().strip("|").split("|")] for line in lines]
    switches, results = cells[:20], cells[20:]
    sweep = load_sweep(ROOT / "experiments" / "pause_warmup.yaml")
    by_label = {r.label: r for r in sweep.rows}
    keys = ("unfreeze_pause_embedding", "unfreeze_pause_head", "unfreeze_lm_head", "unfreeze_lm_embeddings", "lora")
    for row_cells in switches:
        row = by_label[row_cells[0]]
        assert tuple(row.config[k] for k in keys) == tuple(c == "X" for c in row_cells[1:6]), row.name
    for name, (as_run, switches_run) in AS_RUN.items():
        assert tuple(sweep.row(as_run).config[k] for k in keys) == switches_run
        assert sweep.row(name).published == {}
    for row_cells in results:
        row = sweep.row(AS_RUN[row_cells[0]][0]) if row_cells[0] in AS_RUN else by_label[row_cells[0]]
        assert row.published["test_accuracy"] == pytest.approx(float(row_cells[1])), row.name
        if row_cells[2] != "-":
            assert row.published["eval_loss"] == pytest.approx(float(row_cells[2])), row.name
        else:
            assert "eval_loss" not in row.published
    assert len(switches) == len(results) == 20


# --- parsing and selection ----------------------------------------------------------------------------


def test_rows_selection_by_number_range_name_glob_and_dependencies(tmp_path):
    rows = [{"name": f"r{i}", "options": {"value": i}} for i in range(1, 8)]
    rows.append({"name": "child", "init_from": "r2"})
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", rows))
    names = lambda spec: [r.name for r in select_rows(sweep.rows, spec)]  # noqa: E731
    assert names("1-3") == ["r1", "r2", "r3"]
    assert names("1,4,7") == ["r1", "r4", "r7"]
    assert names("r5,r6") == ["r5", "r6"]
    assert names("r[12]") == ["r1", "r2"]
    assert names("child") == ["r2", "child"]  # its dependency comes along
    assert names(None) == [r.name for r in sweep.rows]


def test_grid_is_the_cartesian_product(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", [{"name": "base", "options": {"sleep": 0}}],
                       grid={"value": [0.1, 0.2], "fail": [False, True]})
    sweep = load_sweep(path)
    assert [r.name for r in sweep.rows] == [
        "base,value=0.1,fail=False", "base,value=0.1,fail=True", "base,value=0.2,fail=False", "base,value=0.2,fail=True"]
    assert sweep.rows[3].options == {"sleep": 0.0, "value": 0.2, "fail": True}


def test_set_overrides_every_row_and_is_typed(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a", "options": {"value": 1}}, {"name": "b"}],
                       settings={"sleep": 1})
    from unfreeze.sweep.spec import parse_overrides

    sweep = load_sweep(path, overrides=parse_overrides(["sleep=0", "value=0.25", "log=x.txt"]))
    assert [r.options for r in sweep.rows] == [{"sleep": 0.0, "value": 0.25, "log": "x.txt"}] * 2


def test_row_scoped_set_and_options_files(tmp_path):
    from unfreeze.sweep.spec import parse_overrides

    (tmp_path / "base.yaml").write_text("sleep: 0.5\nvalue: 0.1\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("value: 0.2\n", encoding="utf-8")
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a"}, {"name": "b", "config": "b.yaml"},
                                             {"name": "b2", "config": "b.yaml", "options": {"value": 0.3}}],
                       config="base.yaml", settings={"sleep": 0.25})
    sweep = load_sweep(path)
    assert [(r.options["sleep"], r.options["value"]) for r in sweep.rows] == [(0.25, 0.1), (0.25, 0.2), (0.25, 0.3)]
    sweep = load_sweep(path, overrides=parse_overrides(["b*:value=0.9", "sleep=0"]))
    assert [(r.options["sleep"], r.options["value"]) for r in sweep.rows] == [(0.0, 0.1), (0.0, 0.9), (0.0, 0.9)]
    with pytest.raises(Exception, match="'zz' matches no row"):
        load_sweep(path, overrides=parse_overrides(["zz:value=1"]))


@pytest.mark.parametrize("case,expected", [
    ({"command": "nope"}, "unknown command 'nope'"),
    ({"rows": [{"name": "a", "options": {"bogus": 1}}]}, "unknown key bogus in row 'a'"),
    ({"rows": [{"name": "a"}, {"name": "a"}]}, "duplicate row name 'a'"),
    ({"rows": [{"name": "a", "typo": 1}]}, "unknown key(s) typo in row 'a'"),
    ({"rows": [{"name": "a", "init_from": "zz"}]}, "init_from 'zz' is not a row"),
    ({"rows": [{"name": "a", "init_from": "b"}, {"name": "b", "init_from": "a"}]}, "init_from cycle"),
    ({"rows": [{"name": "a", "options": {"seed": 3}}]}, "option 'seed' is set by the sweep itself"),
    ({"rows": [{"name": "a", "options": {"value": "high"}}]}, "value='high' is not a valid float"),
    ({"rows": [{"name": "a", "published": {"scor": 1}}]}, "unknown metric(s) scor"),
    ({"rows": [{"name": "a/b"}]}, "row name 'a/b'"),
])
def test_bad_sweep_files_fail_before_anything_runs(tmp_path, capsys, case, expected):
    import yaml

    data = {"command": "fake", "rows": [{"name": "a"}], **case}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("args,expected", [
    (["--rows", "9"], "--rows '9': '9' matches no row"),
    (["--rows", "nothing_*"], "matches no row"),
    (["--set", "bogus=1"], "unknown key bogus in row 'a'"),
    (["--set", "seed=1"], "--set seed=... is not allowed"),
    (["--set", "novalue"], "expected key=value"),
    (["--seeds", "1,x"], "expected comma-separated integers"),
])
def test_bad_command_lines_fail_before_anything_runs(tmp_path, capsys, args, expected):
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a"}, {"name": "b"}])
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), *args]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


# --- running ---------------------------------------------------------------------------------------


def test_failed_row_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", [
        {"name": "good", "options": {"value": 0.5}},
        {"name": "bad", "options": {"fail": True}},
        {"name": "after_bad", "init_from": "bad"},
        {"name": "after_good", "init_from": "good"},
    ])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "1,2"]) == 1
    assert set(finished(out)) == {("good", 1), ("good", 2), ("after_good", 1), ("after_good", 2)}
    failures = json.loads((out / "failed.json").read_text())
    assert failures["bad/seed-1"]["status"] == "failed"
    assert failures["bad/seed-1"]["error"] == "RuntimeError: boom in bad"
    assert failures["after_bad/seed-2"]["status"] == "skipped"
    assert "dependency bad seed 2" in failures["after_bad/seed-2"]["error"]
    # the dependant started from its own seed's dependency output
    assert finished(out)[("after_good", 2)]["init"] == str(out / "runs" / "good" / "seed-2" / "final")
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"\| 2 \| bad \| 0.50 \| failed \| failed \| 0 \(2 failed\) \|", table), table
    assert re.search(r"\| 3 \| after_bad \| 0.50 \| skipped \| skipped \| 0 \(2 skipped\) \|", table), table
    assert "bad seed 1: failed: RuntimeError: boom in bad" in table


def test_one_overall_progress_line_counts_rows_times_seeds(tmp_path, capsys):
    """The sweep's own line above each run's bar: runs done of rows x seeds, time so far, time left."""
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a", "options": {"value": 0.1}},
                                           {"name": "b", "options": {"value": 0.2}}])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "1,2,3", "--rows", "a"]) == 0
    err = capsys.readouterr().err
    assert "sweep: 3/3 runs [" in err and " so far, ~" in err and " left]" in err
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "1,2,3"]) == 0  # b's 3 runs; a's 3 finished
    err = capsys.readouterr().err
    assert "sweep: 3/6 runs" in err and "sweep: 6/6 runs" in err


def test_dependency_runs_once_per_seed_before_its_dependants(tmp_path):
    log = tmp_path / "log.txt"
    path = write_sweep(tmp_path / "s.yaml", [
        {"name": "x", "init_from": "step1"},
        {"name": "y", "init_from": "step1"},
        {"name": "step1"},
    ], settings={"log": str(log)})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "1,2", "--rows", "x,y"]) == 0
    order = log_lines(log)
    assert sorted(order) == sorted([("step1", 1), ("step1", 2), ("x", 1), ("x", 2), ("y", 1), ("y", 2)])
    assert order.index(("step1", 1)) < order.index(("x", 1)) and order.index(("step1", 2)) < order.index(("y", 2))
    # a later sweep of another row reuses the finished dependency
    assert main(["sweep", str(path), "--out", str(out), "--seeds", "1,2,3", "--rows", "x"]) == 0
    assert log_lines(log)[6:] == [("step1", 3), ("x", 3)]


def test_keyboard_interrupt_stops_the_sweep_and_keeps_finished_results(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a"}, {"name": "stop", "options": {"interrupt": True}},
                                              {"name": "c"}])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 130
    assert set(finished(out)) == {("a", 0)}
    assert not (out / "failed.json").exists()


def test_changed_options_are_refused_for_rows_with_results(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", [{"name": "a"}, {"name": "b"}])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--rows", "a"]) == 0
    assert main(["sweep", str(path), "--out", str(out), "--set", "value=0.9"]) == 2
    assert "has results of row 'a' made with other options (value: 0.5 -> 0.9)" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(out), "--set", "value=0.9", "--rows", "b"]) == 2
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert set(finished(out)) == {("a", 0), ("b", 0)}


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path, capsys):
    import fcntl

    path = write_sweep(tmp_path / "s.yaml", [{"name": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as handle:  # as a running sweep holds it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["sweep", str(path), "--out", str(out)]) == 2
    assert "another sweep is running" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(out)]) == 0


def _sweep_process(sweep: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = ["sweep", str(sweep), "--out", str(out), "--seeds", "1,2", *extra]
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_sweep; test_sweep.register(); "
            f"from unfreeze.cli import main; raise SystemExit(main({argv!r}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _check_invariants(out: Path) -> None:
    """Every finished folder holds its metrics; nothing else looks finished."""
    for folder in (out / "runs").glob("*/seed-*"):
        if re.fullmatch(r"seed-\d+", folder.name):
            assert (folder / "metrics.json").is_file(), folder


def test_sweep_killed_part_way_resumes_with_exactly_the_expected_results(tmp_path):
    log = tmp_path / "log.txt"
    rows = [{"name": n, "options": {"value": v}} for n, v in (("a", 0.1), ("b", 0.2), ("c", 0.3))]
    sweep = write_sweep(tmp_path / "s.yaml", rows, settings={"sleep": 0.3, "log": str(log)})
    out = tmp_path / "out"

    process = _sweep_process(sweep, out)
    _wait_for(lambda: any((out / "runs" / "b").glob("seed-1.partial*/started")))  # a done, b seed 1 running
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert set(finished(out)) == {("a", 1), ("a", 2)}
    assert list((out / "runs" / "b").glob("seed-1.partial*"))  # the killed run's leftovers
    _check_invariants(out)
    kept = (out / "runs" / "a" / "seed-1" / "metrics.json").stat()

    before = len(log_lines(log))
    process = _sweep_process(sweep, out)
    assert process.wait(timeout=60) == 0, process.stderr.read().decode()
    assert sorted(log_lines(log)[before:]) == [("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    results = finished(out)
    assert {key: m["score"] for key, m in results.items()} == {
        ("a", 1): 0.11, ("a", 2): 0.12, ("b", 1): 0.21, ("b", 2): 0.22, ("c", 1): 0.31, ("c", 2): 0.32}
    assert (out / "runs" / "a" / "seed-1" / "metrics.json").stat().st_ino == kept.st_ino  # not rerun
    assert not list((out / "runs").glob("*/*.partial*"))  # leftovers cleared by the rerun

    process = _sweep_process(sweep, out)  # everything done: nothing runs
    assert process.wait(timeout=60) == 0
    assert len(log_lines(log)) == before + 4


def test_sweep_killed_at_random_moments_never_loses_or_duplicates(tmp_path):
    rows = [{"name": n, "options": {"value": v}} for n, v in (("a", 0.1), ("b", 0.2), ("c", 0.3))]
    sweep = write_sweep(tmp_path / "s.yaml", rows, settings={"sleep": 0.05})
    out = tmp_path / "out"
    rng = random.Random(0)
    for _ in range(6):
        process = _sweep_process(sweep, out)
        time.sleep(rng.uniform(0.3, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        _check_invariants(out)
    process = _sweep_process(sweep, out)
    assert process.wait(timeout=60) == 0, process.stderr.read().decode()
    _check_invariants(out)
    assert sorted(finished(out)) == [(r, s) for r in "abc" for s in (1, 2)]
    assert not list((out / "runs").glob("*/*.partial*"))


# --- the real classify command -------------------------------------------------------------------------


def _tiny_spam_folder(folder: Path) -> Path:
    import csv

    ham = ["see you at lunch", "ok thanks", "call me later", "are we still on for tonight", "love you mum"]
    spam = ["WIN a free prize now", "URGENT claim your cash", "free entry txt WIN", "you won 1000 call now",
            "claim free ringtone"]
    folder.mkdir()
    for split, n in (("train", 10), ("validation", 4), ("test", 4)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Label", "Text"])
            for i in range(n):
                writer.writerow([i % 2, (spam if i % 2 else ham)[i % 5]])
    return folder


def test_real_classify_sweep_runs_and_reports(tmp_path, capsys):
    pytest.importorskip("unfreeze.recipes.classify.recipe", reason="classify.py not written yet")
    tokenizer = SHARED / "data" / "gpt2_bpe"
    if not (tokenizer / "encoder.json").is_file():
        pytest.skip("../shared/data/gpt2_bpe not present (offline tokenizer)")
    data = _tiny_spam_folder(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["sweep", str(ROOT / "experiments" / "spam_additional.yaml"), "--rows", "reference,last_layer",
            "--seeds", "1", "--out", str(out), "--set", "weights=random", "--set", f"data={data}",
            "--set", f"tokenizer={tokenizer}", "--set", 'model_config={"n_layer":1,"n_embd":32,"n_head":2}',
            "--set", "num_epochs=1", "--set", "device=cpu"]
    assert main(argv) == 0
    results = finished(out)
    assert set(results) == {("reference", 1), ("last_layer", 1)}
    assert results[("last_layer", 1)]["trainable_params"] < results[("reference", 1)]["trainable_params"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    # the Model column says what --model_config made of GPT-2 small (issue 22, item 10)
    assert '| 1 | reference | gpt2-small (124M) {"n_layer":1,"n_embd":32,"n_head":2} | random | last | last_block |' \
        in table
    assert "(pub. 95.00%)" in table and "| 3 | last_layer |" in table
    assert main(argv) == 0  # everything finished: nothing runs again
    assert finished(out) == results


# --- Ray --------------------------------------------------------------------------------------------------


def test_ray_backend_runs_a_tiny_sweep_on_a_local_ray_instance(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'unfreeze[ray]'")
    # Ray workers are fresh processes: they import this module (the fake command) through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    log = tmp_path / "log.txt"
    sweep = write_sweep(tmp_path / "s.yaml", [{"name": "a", "options": {"value": 0.1}},
                                              {"name": "b", "options": {"value": 0.2}, "resources": {"num_cpus": 1}}],
                        settings={"log": str(log)}, resources={"num_gpus": 1})
    out = tmp_path / "out"
    argv = ["sweep", str(sweep), "--out", str(out), "--backend", "ray", "--seeds", "1"]
    assert main(argv + ["--rows", "a"]) == 2  # asks for a GPU the local instance does not have
    assert main(argv + ["--resources", "{num_cpus: 1}"]) == 0
    assert {k: m["score"] for k, m in finished(out).items()} == {("a", 1): 0.11, ("b", 1): 0.21}
    workers = {line.split()[0] for line in log.read_text().splitlines()}
    assert workers == {"a", "b"}


# --- options that name files are made absolute: declared on the field, so none can be missed -------------


def test_a_relative_model_path_is_stored_absolute_like_every_path_option(tmp_path, monkeypatch):
    """`model: my.gguf` in a row and `--set model=FOLDER` become absolute in sweep.json (resumed from another
    directory, or run on Ray workers, the run still finds them)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.gguf").write_bytes(b"GGUF")
    (tmp_path / "folder").mkdir()
    (tmp_path / "sweep.yaml").write_text(
        "command: classify\nrows:\n  - name: a\n    options: {model: my.gguf, data: data.csv}\n  - name: b\n")
    (tmp_path / "data.csv").write_text("Text,Label\n")
    sweep = load_sweep(tmp_path / "sweep.yaml", overrides={"b:model": "folder", "b:feature_cache_dir": "folder"})
    assert sweep.row("a").options["model"] == str(tmp_path / "my.gguf")
    assert sweep.row("a").options["data"] == str(tmp_path / "data.csv")
    assert sweep.row("b").options["model"] == str(tmp_path / "folder")
    assert sweep.row("b").options["feature_cache_dir"] == str(tmp_path / "folder")


# Options whose help mentions a file or folder but hold no path (checked: the test below fails on a new one).
NOT_PATHS = {"split",  # train,validation,test fractions "that cut a single --data file"
             "run_name"}  # a name in the tracker ("default: --out's folder name")


def test_every_option_that_names_a_file_or_folder_is_a_path_option():
    """A new option whose help says it names a file or folder, declared without `option(path=True)`, fails
    here: the sweep would otherwise keep it relative (the drift issue 21 found for classify's --model)."""
    import re
    import typing

    from unfreeze.config import _help_texts, field_meta

    for name, task in TASKS.items():
        helps, types = _help_texts(task.config), typing.get_type_hints(task.config)
        for field in dataclasses.fields(task.config):
            text, kind = helps.get(field.name, ""), types[field.name]
            takes_text = kind is str or str in typing.get_args(kind)
            if takes_text and re.search(r"\b(file|folder|path|directory)\b", text) and field.name not in NOT_PATHS:
                assert field_meta(task.config, field.name)["path"], (name, field.name, text)
