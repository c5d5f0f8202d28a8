"""`unfreeze report`: a hand-made sweep folder with made-up results, checked against a table computed by hand."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from unfreeze.cli import main
from unfreeze.reporting.table import build_table, format_value, render

COLUMNS = [
    {"label": "Layers", "key": "trainable_layers", "source": "option", "format": "text"},
    {"label": "LoRA", "key": "lora", "source": "option", "format": "check"},
    {"label": "Test acc", "key": "test_acc", "source": "metric", "format": "percent"},
    {"label": "Training time", "key": "train_time_s", "source": "metric", "format": "minutes"},
    {"label": "Eval loss", "key": "eval_loss", "source": "metric", "format": "float5"},
    {"label": "Trainable params", "key": "trainable_params", "source": "metric", "format": "int"},
]


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _metrics(acc, seconds, loss, params):
    return {"test_acc": acc, "train_time_s": seconds, "eval_loss": loss, "trainable_params": params}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    out = tmp_path / "sw"
    rows = [
        {"index": 1, "name": "a", "config": {"trainable_layers": "all", "lora": False},
         "published": {"test_acc": 0.95, "train_time_s": 30.0}},
        {"index": 2, "name": "b", "config": {"trainable_layers": "lora", "lora": True}, "published": {}},
        {"index": 3, "name": "c", "config": {"trainable_layers": "last_layer", "lora": False},
         "published": {"test_acc": 0.72}},
        {"index": 4, "name": "d", "config": {"trainable_layers": "all", "lora": False}, "published": {}},
        {"index": 5, "name": "e", "config": {"trainable_layers": "all", "lora": False}, "published": {},
         "init_from": "a"},
    ]
    _write(out / "sweep.json", {
        "format": 1, "command": "classify", "main_metric": "test_acc", "columns": COLUMNS,
        "overrides": {"num_epochs": 1}, "source": "made up", "selected": ["a", "b", "c", "e"], "rows": rows,
    })
    # a: three seeds -> mean 0.92, sample std 0.02; 60/90/120 s -> 1.50 ± 0.50 min; loss 0.6 ± 0.1
    for seed, (acc, seconds, loss) in zip((1, 2, 3), ((0.90, 60, 0.5), (0.92, 90, 0.6), (0.94, 120, 0.7))):
        _write(out / "runs" / "a" / f"seed-{seed}" / "metrics.json", _metrics(acc, seconds, loss, 1000))
    # leftovers of a killed run never count, even with a metrics.json inside
    _write(out / "runs" / "a" / "seed-4.partial-0123abcd" / "metrics.json", _metrics(0.0, 1, 9.9, 1000))
    # b: one seed finished, one failed
    _write(out / "runs" / "b" / "seed-1" / "metrics.json", _metrics(0.8, 30, 1.25, 500))
    # d: finished, although not in 'selected' (an earlier sweep of the folder ran it)
    _write(out / "runs" / "d" / "seed-1" / "metrics.json", _metrics(0.5, 6, 2.0, 1234567))
    _write(out / "failed.json", {
        "b/seed-2": {"row": "b", "seed": 2, "status": "failed", "error": "RuntimeError: out of memory"},
        "c/seed-1": {"row": "c", "seed": 1, "status": "failed", "error": "ValueError: bad"},
        "c/seed-2": {"row": "c", "seed": 2, "status": "failed", "error": "ValueError: bad"},
        "e/seed-1": {"row": "e", "seed": 1, "status": "skipped", "error": "skipped: dependency a seed 1 did not finish"},
        "a/seed-1": {"row": "a", "seed": 1, "status": "failed", "error": "an old failure, finished since"},
    })
    return out


EXPECTED_MD = """\
| # | Row | Layers | LoRA | Test acc | Training time | Eval loss | Trainable params | Seeds |
|---|---|---|---|---|---|---|---|---|
| 1 | a | all |  | 92.00 ± 2.00% (pub. 95.00%) | 1.50 ± 0.50 min (pub. 0.50 min) | 0.60000 ± 0.10000 | 1,000 | 3 |
| 2 | b | lora | X | 80.00% | 0.50 min | 1.25000 | 500 | 1 (1 failed) |
| 3 | c | last_layer |  | failed (pub. 72.00%) | failed | failed | failed | 0 (2 failed) |
| 4 | d | all |  | 50.00% | 0.10 min | 2.00000 | 1,234,567 | 1 |
| 5 | e | all |  | skipped | skipped | skipped | skipped | 0 (1 skipped) |

Metrics: mean ± sample standard deviation over seeds (n-1); (pub. x): the published value.
Published values: made up
Overrides (--set): num_epochs=1
Started from the output of a (same seed; its model options apply): e

Runs without a result:
- b seed 2: failed: RuntimeError: out of memory
- c seed 1: failed: ValueError: bad
- c seed 2: failed: ValueError: bad
- e seed 1: skipped: skipped: dependency a seed 1 did not finish
"""


def test_markdown_table_matches_the_hand_computed_one(sweep_dir, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    assert capsys.readouterr().out == EXPECTED_MD


def test_csv_has_raw_means_and_sample_stds(sweep_dir, capsys):
    assert main(["report", str(sweep_dir), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["row"] for r in rows] == ["a", "b", "c", "d", "e"]
    a = rows[0]
    assert float(a["test_acc_mean"]) == pytest.approx(0.92)
    assert float(a["test_acc_std"]) == pytest.approx(0.02)
    assert float(a["test_acc_published"]) == pytest.approx(0.95)
    assert float(a["train_time_s_mean"]) == pytest.approx(90.0)
    assert float(a["train_time_s_std"]) == pytest.approx(30.0)
    assert a["seeds"] == "1 2 3" and a["status"] == "finished" and a["failed_seeds"] == ""
    assert rows[1]["test_acc_std"] == "" and rows[1]["failed_seeds"] == "2"
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "ValueError: bad; ValueError: bad"
    assert rows[4]["status"] == "skipped"


def test_json_holds_every_value(sweep_dir):
    table = json.loads(render(build_table(sweep_dir), "json"))
    a = table["rows"][0]
    assert a["metrics"]["eval_loss"]["values"] == [0.5, 0.6, 0.7]
    assert a["metrics"]["eval_loss"]["std"] == pytest.approx(0.1)
    assert a["metrics"]["test_acc"]["published"] == 0.95
    assert table["main_metric"] == "test_acc"


def test_plot_writes_a_png_bar_chart(sweep_dir, tmp_path, capsys):
    target = tmp_path / "plots" / "bars.png"
    assert main(["report", str(sweep_dir), "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 5000


@pytest.mark.parametrize("name, magic", [("chart.svg", b"<?xml"), ("chart.jpg", b"\xff\xd8"), ("chart.PDF", b"%PDF")])
def test_plot_writes_any_format_matplotlib_supports_under_its_own_name(sweep_dir, tmp_path, capsys, name, magic):
    assert main(["report", str(sweep_dir), "--plot", str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_bytes().startswith(magic)
    # the bar chart keeps the name given; the frontier (the runs record params and time, no loss curves)
    # sits beside it in the same format
    stem, suffix = name.split(".")
    written = {p.name for p in tmp_path.iterdir() if p.name.startswith("chart")}
    assert written == {f"{stem}.{suffix}", f"{stem}.frontier.{suffix}"}
    assert (tmp_path / f"{stem}.frontier.{suffix}").read_bytes().startswith(magic)


def test_a_folder_that_is_not_a_sweep_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no sweep.json" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("value,fmt,std,expected", [
    (0.9567, "percent", None, "95.67%"),
    (0.9567, "percent", 0.0, "95.67%"),  # identical seeds: no ± 0.00
    (23.4, "minutes", None, "0.39 min"),
    (0.57003, "float5", None, "0.57003"),
    (0.48, "float2", 0.015, "0.48 ± 0.01"),
    (7087618.0, "int", None, "7,087,618"),
    (True, "check", None, "X"),
    (False, "check", None, ""),
    ("cpu, cuda", "text", None, "cpu, cuda"),
    (None, "percent", None, ""),
])
def test_format_value(value, fmt, std, expected):
    assert format_value(value, fmt, std) == expected


def test_model_column_shows_model_over_model_size():
    """A run with --model is reported under its model (a .gguf by file name), not the unused --model_size."""
    from unfreeze.registry import TASKS
    from unfreeze.reporting.table import option_value

    column = next(vars(c) for c in TASKS["classify"].columns if c.label == "Model")
    assert option_value({"model_size": "gpt2-small (124M)", "model": None}, column) == "gpt2-small (124M)"
    assert option_value({"model_size": "gpt2-small (124M)", "model": "Qwen/Qwen2-0.5B"}, column) == "Qwen/Qwen2-0.5B"
    assert option_value({"model_size": "gpt2-small (124M)", "model": "/x/y/SmolLM2.Q4_1.gguf"}, column) == "SmolLM2.Q4_1.gguf"
