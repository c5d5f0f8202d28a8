"""`unfreeze report --html/--plot`: the frontier, loss curves, links per run and suggest rounds, on sweep and
suggest folders made here (and on a real tiny classify sweep)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from unfreeze.cli import main
from unfreeze.reporting.table import build_table, render, runs_of
from unfreeze.reporting.charts import Point, pareto, sweep_curves, sweep_points

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COLUMNS = [
    {"label": "Trainable layers", "key": "trainable_layers", "source": "option", "format": "text"},
    {"label": "Test acc", "key": "test_acc", "source": "metric", "format": "percent"},
    {"label": "Training time", "key": "train_time_s", "source": "metric", "format": "minutes"},
    {"label": "Trainable params", "key": "trainable_params", "source": "metric", "format": "int"},
]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _run(acc, seconds, params, losses, peak=None, **extra):
    """A classify-style metrics.json: history every 50 steps (config eval_every)."""
    metrics = {"test_acc": acc, "train_time_s": seconds, "trainable_params": params, "config": {"eval_every": 50},
               "history": {"train_loss": losses, "val_loss": [v + 0.1 for v in losses], "train_acc": [0.5]}}
    if peak is not None:
        metrics["peak_memory_bytes"] = peak
    return {**metrics, **extra}


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path)


def make_sweep(tmp_path: Path) -> Path:
    """A classify sweep folder: head (3 seeds), block (2), all (1), lora (failed), with links of each kind."""
    out = tmp_path / "sw"
    rows = [{"index": i, "name": name, "config": {"trainable_layers": name}, "published": {}}
            for i, name in enumerate(("head", "block", "all", "lora"), start=1)]
    rows[1]["published"] = {"test_acc": 0.96}
    _write(out / "sweep.json", {"format": 1, "command": "classify", "main_metric": "test_acc", "columns": COLUMNS,
                                "rows": rows, "selected": [r["name"] for r in rows]})
    runs = out / "runs"
    for seed, acc, losses in ((1, 0.80, [0.7, 0.5, 0.3]), (2, 0.82, [0.9, 0.5, 0.1]), (3, 0.84, [0.8, 0.5, 0.2])):
        _write(runs / "head" / f"seed-{seed}" / "metrics.json", _run(acc, 10 + seed, 1538, losses, peak=2**20 * 100))
    (runs / "head" / "seed-1" / "final").mkdir()
    (runs / "head" / "seed-1" / "predictions.jsonl").write_text("{}\n")
    tracked = {"backend": "trackio", "project": "unfreeze", "run": "sw/block/seed-1", "url": None,
               "location": str(out / "trackio" / "unfreeze.db"), "view": "TRACKIO_DIR=... trackio show"}
    for seed, acc in ((1, 0.95), (2, 0.97)):
        _write(runs / "block" / f"seed-{seed}" / "metrics.json",
               _run(acc, 60, 7_000_000, [0.6, 0.3, 0.1], peak=2**20 * 300, predictions_file="preds/test.csv",
                    model_dir=str(tmp_path / "models" / f"block-{seed}"), tracker_run=tracked))
        (runs / "block" / f"seed-{seed}" / "preds").mkdir()
        (runs / "block" / f"seed-{seed}" / "preds" / "test.csv").write_text("id,label\n")
        (tmp_path / "models" / f"block-{seed}").mkdir(parents=True)
    _write(out / "trackio" / "unfreeze.db", {})
    _write(runs / "all" / "seed-1" / "metrics.json",
           _run(0.94, 300, 124_000_000, [0.9, 0.4, 0.2], tracker_run="https://wandb.ai/me/unfreeze/runs/abc"))
    _write(out / "failed.json", {"lora/seed-1": {"row": "lora", "seed": 1, "status": "failed", "error": "boom"}})
    return out


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str, tag: str) -> list[dict]:
    return [attrs for name, attrs in Elements(text).tags if name == tag]


def test_pareto_front_by_hand():
    points = [Point("cheap", 90, 90, 90, {"c": (10, 10, 10)}), Point("dear", 95, 95, 95, {"c": (100, 100, 100)}),
              Point("worse", 80, 80, 80, {"c": (50, 50, 50)}), Point("tie", 90, 90, 90, {"c": (20, 20, 20)}),
              Point("no cost", 99, 99, 99)]
    assert [points[i].name for i in pareto(points, "c", higher=True)] == ["cheap", "dear"]
    # a loss: lower is better
    assert [points[i].name for i in pareto(points, "c", higher=False)] == ["cheap", "worse"]


def test_points_and_curves_are_means_over_seeds(sweep):
    table = build_table(sweep)
    runs = runs_of(table)
    points = {p.name: p for p in sweep_points(table, runs)}
    assert set(points) == {"head", "block", "all"}  # the failed row has no point
    head = points["head"]
    assert head.y == pytest.approx(82.0) and head.y_high - head.y == pytest.approx(2.0)  # percent, sample std
    assert head.x["train_time_s"] == pytest.approx((12.0, 11.0, 13.0))
    assert head.x["peak_memory_bytes"][0] == pytest.approx(100.0)  # MiB
    assert "peak_memory_bytes" not in points["all"].x
    curves = {c.name: c for c in sweep_curves(table, runs)}
    steps, mean, low, high = curves["head"].lines["training loss"]
    assert steps == [0, 50, 100]
    assert mean == pytest.approx([0.8, 0.5, 0.2]) and high[0] - mean[0] == pytest.approx(0.1) and low[1] == 0.5
    assert curves["head"].lines["validation loss"][1] == pytest.approx([0.9, 0.6, 0.3])


def test_sft_histories_become_curves(tmp_path):
    from unfreeze.reporting.charts import run_curves

    metrics = {"train_history": [{"step": 10, "train_loss": 2.0}, {"step": 20, "train_loss": 1.5}],
               "eval_history": [{"step": 0, "eval_loss": 2.5}, {"step": 20, "eval_loss": 1.7}]}
    assert run_curves(metrics) == {"training loss": ([10.0, 20.0], [2.0, 1.5]),
                                   "validation loss": ([0.0, 20.0], [2.5, 1.7])}


def test_links_per_run_in_md_csv_and_json(sweep, tmp_path):
    table = build_table(sweep)
    markdown = render(table, "md")
    header = markdown.splitlines()[0]
    assert header.endswith("| Seeds | Predictions | Model | Tracker run |")
    head_line = next(line for line in markdown.splitlines() if line.startswith("| 1 | head |"))
    assert "[seed 1](runs/head/seed-1/predictions.jsonl) | [seed 1](runs/head/seed-1/final) |" in head_line
    block_line = next(line for line in markdown.splitlines() if line.startswith("| 2 | block |"))
    assert "[seed 1](runs/block/seed-1/preds/test.csv) [seed 2](runs/block/seed-2/preds/test.csv)" in block_line
    assert f"[seed 2]({tmp_path / 'models' / 'block-2'})" in block_line  # outside the sweep: absolute
    assert "seed 1: trackio sw/block/seed-1" in block_line
    assert "[seed 1](https://wandb.ai/me/unfreeze/runs/abc)" in markdown
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO(render(table, "csv")))}
    assert rows["head"]["predictions"] == "runs/head/seed-1/predictions.jsonl" and rows["lora"]["model"] == ""
    assert rows["all"]["tracker"] == "https://wandb.ai/me/unfreeze/runs/abc"
    data = json.loads(render(table, "json"))
    assert data["rows"][1]["links"]["2"]["tracker"]["run"] == "sw/block/seed-1"


def test_html_page_is_self_contained_with_a_line_and_a_point_per_row(sweep, tmp_path, capsys):
    page = tmp_path / "pages" / "report.html"
    assert main(["report", str(sweep), "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert [a["data-row"] for a in _tags(text, "tr") if "data-row" in a] == ["head", "block", "all", "lora"]
    groups = [a["id"] for a in _tags(text, "g") if a.get("id", "").startswith("point-")]
    for cost in ("trainable_params", "train_time_s"):
        assert sorted(g for g in groups if g.startswith(f"point-{cost}-")) == [f"point-{cost}-{i}" for i in range(3)]
    assert len([g for g in groups if g.startswith("point-peak_memory_bytes-")]) == 2
    assert [a["data-chart"] for a in _tags(text, "figure")] == ["frontier", "curves"]
    # nothing is fetched: no external script, style, image or font, no CDN
    assert not _tags(text, "link") and not [a for a in _tags(text, "script") if "src" in a]
    assert not [a for a in _tags(text, "img")] and "@import" not in text
    assert not re.search(r"(src|href)=\"//", text) and "cdn" not in text.lower()
    assert "92.00" not in text and "96.00 ± 1.41% (pub. 96.00%)" in text  # the table's own cells
    # every local link resolves from the page's folder
    targets = [a["href"] for a in _tags(text, "a") if not a["href"].startswith("http")]
    assert targets and all((page.parent / target).exists() for target in targets)
    assert "runs/head/seed-1/final" in " ".join(targets)


def test_plot_draws_bars_frontier_and_curves(sweep, tmp_path, capsys):
    target = tmp_path / "out" / "acc.png"
    assert main(["report", str(sweep), "--plot", str(target)]) == 0
    for name in ("acc.png", "acc.frontier.png", "acc.curves.png"):
        assert (target.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


# --- a suggest folder --------------------------------------------------------------------------------------


def _candidate(rank, name, acc, params, seconds, peak, rounds):
    return {"rank": rank, "name": name, "predicted_val_acc": acc, "interval": [acc - 0.05, min(1.0, acc + 0.04)],
            "trainable_params": params, "predicted_time_s": seconds, "predicted_peak_bytes": peak,
            "evidence": {"rounds": rounds}}


@pytest.fixture
def suggest_dir(tmp_path) -> Path:
    return make_suggestion(tmp_path)


def make_suggestion(tmp_path: Path) -> Path:
    """A suggest folder: four candidates, two rounds of halving."""
    rounds = [
        {"steps": {"last_layer": 4, "last_block": 4, "all": 4, "lora": 4},
         "scores": {"last_layer": [0.70, 0.61], "last_block": [0.88, 0.35], "all": [0.90, 0.30], "lora": [0.60, 0.66]},
         "kept": ["all", "last_block"]},
        {"steps": {"last_block": 12, "all": 12}, "scores": {"last_block": [0.93, 0.21], "all": [0.91, 0.25]},
         "kept": ["last_block"]},
    ]
    candidates = [_candidate(1, "last_block", 0.93, 7_000_000, 40.0, 3 * 2**30, 2),
                  _candidate(2, "all", 0.91, 124_000_000, 200.0, 6 * 2**30, 2),
                  _candidate(3, "last_layer", 0.70, 1538, 5.0, 2**30, 1),
                  _candidate(4, "lora", 0.60, 800_000, 90.0, 4 * 2**30, 1)]
    _write(tmp_path / "sg" / "suggestion.json", {"pick": "last_block", "candidates": candidates, "budget": "0.2",
                                                 "spent_s": 30.0, "sweep_predicted_s": 300.0,
                                                 "halving": {"rounds": rounds, "stopped_early": False}})
    return tmp_path / "sg"


def test_suggest_folder_reports_candidates_and_rounds(suggest_dir, capsys):
    assert main(["report", str(suggest_dir)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | last_block | 93.00% (88.0-97.0) | 7,000,000 | 40.0 s | 3.0 GiB | 2 |" in out
    assert ("- Round 1: **all** 90.0% (loss 0.300, 4 steps), **last_block** 88.0% (loss 0.350, 4 steps), "
            "~~last_layer~~ 70.0% (loss 0.610, 4 steps), ~~lora~~ 60.0% (loss 0.660, 4 steps)") in out
    assert "- Round 2: **last_block** 93.0% (loss 0.210, 12 steps), ~~all~~ 91.0%" in out


def test_suggest_folder_html_and_plot(suggest_dir, tmp_path, capsys):
    page = tmp_path / "sg.html"
    assert main(["report", str(suggest_dir), "--html", str(page), "--plot", str(tmp_path / "sg.png")]) == 0
    text = page.read_text(encoding="utf-8")
    assert [a["data-row"] for a in _tags(text, "tr") if "data-row" in a] == ["last_block", "all", "last_layer", "lora"]
    kept = [(a["data-round"], a["class"]) for a in _tags(text, "td") if "data-round" in a]
    assert kept.count(("1", "kept")) == 2 and kept.count(("1", "out")) == 2 and kept.count(("2", "kept")) == 1
    assert len([a for a in _tags(text, "g") if a.get("id", "").startswith("point-trainable_params-")]) == 4
    assert (tmp_path / "sg.png").is_file() and (tmp_path / "sg.frontier.png").is_file()


def test_a_broken_suggestion_is_one_line(tmp_path, capsys):
    _write(tmp_path / "sg" / "suggestion.json", {"pick": "x", "candidates": [{"name": "x"}], "halving": {"rounds": []}})
    assert main(["report", str(tmp_path / "sg")]) == 2
    assert "malformed candidate" in capsys.readouterr().err


# --- a real tiny classify sweep ------------------------------------------------------------------------------


def _tiny_spam_folder(folder: Path) -> Path:
    ham = ["see you at lunch", "ok thanks", "call me later", "are we still on for tonight", "love you mum"]
    spam = ["WIN a free prize now", "URGENT claim your cash", "free entry txt WIN", "you won 1000 call now",
            "claim free ringtone"]
    folder.mkdir()
    for split, n in (("train", 24), ("validation", 4), ("test", 4)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Label", "Text"])
            for i in range(n):
                writer.writerow([i % 2, (spam if i % 2 else ham)[i % 5]])
    return folder


def test_a_real_classify_sweep_reports_as_html_and_charts(tmp_path, capsys):
    tokenizer = SHARED / "data" / "gpt2_bpe"
    if not (tokenizer / "encoder.json").is_file():
        pytest.skip("../shared/data/gpt2_bpe not present (offline tokenizer)")
    data = _tiny_spam_folder(tmp_path / "data")
    out = tmp_path / "sw"
    assert main(["sweep", str(ROOT / "experiments" / "spam_additional.yaml"), "--rows", "reference,last_layer",
                 "--seeds", "1,2", "--out", str(out), "--set", "weights=random", "--set", f"data={data}",
                 "--set", f"tokenizer={tokenizer}", "--set", 'model_config={"n_layer":1,"n_embd":32,"n_head":2}',
                 "--set", "num_epochs=2", "--set", "batch_size=4", "--set", "eval_freq=2", "--set", "device=cpu"]) == 0
    capsys.readouterr()
    page = tmp_path / "report.html"
    assert main(["report", str(out), "--html", str(page), "--plot", str(tmp_path / "acc.png")]) == 0
    text = page.read_text(encoding="utf-8")
    assert [a["data-row"] for a in _tags(text, "tr") if "data-row" in a] == ["reference", "last_layer"]
    points = [a["id"] for a in _tags(text, "g") if a.get("id", "").startswith("point-trainable_params-")]
    assert sorted(points) == ["point-trainable_params-0", "point-trainable_params-1"]
    table = build_table(out)
    curves = {c.name: c for c in sweep_curves(table, runs_of(table))}
    steps, mean, _, _ = curves["last_layer"].lines["training loss"]
    assert steps[:2] == [0, 2] and len(steps) >= 3 and all(math.isfinite(v) for v in mean)
    assert {p.name for p in (tmp_path).iterdir() if p.suffix == ".png"} == {"acc.png", "acc.frontier.png",
                                                                             "acc.curves.png"}


def test_html_into_a_folder_is_refused_before_anything_is_printed(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--html", str(tmp_path)]) == 2
    said = capsys.readouterr()
    assert "--html" in said.err and said.out == ""


def test_a_real_suggest_folder_reports(spam_csv_dir, byte_tokenizer_dir, tmp_path, capsys):
    """The report reads what `unfreeze suggest --out` really writes."""
    out = tmp_path / "sg"
    assert main(["suggest", "--weights", "random", "--model_config", '{"n_layer":2,"n_embd":32,"n_head":2}',
                 "--data", str(spam_csv_dir), "--tokenizer", str(byte_tokenizer_dir), "--num_epochs", "2",
                 "--batch_size", "4", "--device", "cpu", "--candidates", "last_layer,last_block,all",
                 "--budget", "300s", "--out", str(out), "--feature_cache_dir", str(tmp_path / "features")]) == 0
    suggestion = json.loads((out / "suggestion.json").read_text())
    capsys.readouterr()
    assert main(["report", str(out), "--html", str(tmp_path / "sg.html")]) == 0
    printed = capsys.readouterr().out
    assert f"Pick: {suggestion['pick']}." in printed and printed.count("- Round ") == len(suggestion["halving"]["rounds"])
    text = (tmp_path / "sg.html").read_text(encoding="utf-8")
    assert sorted(a["data-row"] for a in _tags(text, "tr") if "data-row" in a) == ["all", "last_block", "last_layer"]
    assert len([a for a in _tags(text, "td") if a.get("class") == "kept"]) == sum(
        len(r["kept"]) for r in suggestion["halving"]["rounds"])
