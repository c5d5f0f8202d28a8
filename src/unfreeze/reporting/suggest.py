"""`unfreeze report DIR` on a suggest folder (the --out of `unfreeze suggest`, holding suggestion.json):
the ranked candidates, and its rounds of successive halving (who was scored, with what, who survived)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from unfreeze.errors import UsageError
from unfreeze.files import read_json_or_explain
from unfreeze.reporting.charts import Point, frontier_figure, rounds_figure, save, sibling

FIX = "rerun `unfreeze suggest --out` into this folder to rewrite it"


def is_suggest_folder(directory: str | Path) -> bool:
    return (Path(directory) / "suggestion.json").is_file()


def build_suggestion(directory: str | Path) -> dict[str, Any]:
    """suggestion.json, with the parts the report reads checked (a cut or foreign file is one error line)."""
    path = Path(directory) / "suggestion.json"
    data = read_json_or_explain(path, FIX)
    candidates = data.get("candidates") if isinstance(data, dict) else None
    rounds = (data.get("halving") or {}).get("rounds") if isinstance(data, dict) else None
    if not isinstance(candidates, list) or not isinstance(rounds, list):
        raise UsageError(f"{path} is not a suggestion (no candidates or rounds); {FIX}")
    needed = {"rank", "name", "predicted_val_acc", "interval", "trainable_params", "predicted_time_s",
              "predicted_peak_bytes"}
    for row in candidates:
        if not isinstance(row, dict) or not needed <= set(row):
            raise UsageError(f"{path} has a malformed candidate {str(row)[:80]}; {FIX}")
    for rung in rounds:
        if not isinstance(rung, dict) or not {"steps", "scores", "kept"} <= set(rung):
            raise UsageError(f"{path} has a malformed round {str(rung)[:80]}; {FIX}")
    return {"kind": "suggest", "dir": str(directory), "pick": data.get("pick"), "candidates": candidates,
            "rounds": rounds, "budget": data.get("budget"), "spent_s": data.get("spent_s"),
            "sweep_predicted_s": data.get("sweep_predicted_s"), "stopped_early": data["halving"].get("stopped_early")}


def size_text(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


HEADER = ("Rank", "Candidate", "Val acc (95% CI)", "Trainable params", "Predicted time", "Predicted peak memory",
          "Rounds")


def candidate_cells(row: dict[str, Any], rounds: list[dict[str, Any]]) -> list[str]:
    low, high = row["interval"]
    played = sum(row["name"] in rung["scores"] for rung in rounds)
    return [str(row["rank"]), row["name"], f"{row['predicted_val_acc'] * 100:.2f}% ({low * 100:.1f}-{high * 100:.1f})",
            f"{row['trainable_params']:,}", f"{row['predicted_time_s']:.1f} s", size_text(row["predicted_peak_bytes"]),
            str(played)]


def round_lines(suggestion: dict[str, Any]) -> list[str]:
    """One line per round: every candidate scored (accuracy, loss, steps), the survivors marked."""
    lines = []
    for number, rung in enumerate(suggestion["rounds"], start=1):
        scored = sorted(rung["scores"].items(), key=lambda item: -item[1][0])
        parts = [f"{'**' if name in rung['kept'] else '~~'}{name}{'**' if name in rung['kept'] else '~~'} "
                 f"{acc * 100:.1f}% (loss {loss:.3f}, {rung['steps'][name]} steps)" for name, (acc, loss) in scored]
        lines.append(f"- Round {number}: " + ", ".join(parts))
    return lines


def render_suggestion(suggestion: dict[str, Any], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps(suggestion, indent=2, default=str) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["rank", "candidate", "predicted_val_acc", "interval_low", "interval_high", "trainable_params",
                         "predicted_time_s", "predicted_peak_bytes", "rounds"])
        for row in suggestion["candidates"]:
            played = sum(row["name"] in rung["scores"] for rung in suggestion["rounds"])
            writer.writerow([row["rank"], row["name"], row["predicted_val_acc"], *row["interval"],
                             row["trainable_params"], row["predicted_time_s"], row["predicted_peak_bytes"], played])
        return buffer.getvalue()
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(candidate_cells(row, suggestion["rounds"])) + " |" for row in suggestion["candidates"]]
    lines += ["", f"Pick: {suggestion['pick']}. Successive halving (bold: kept, struck: eliminated):"]
    lines += round_lines(suggestion)
    if suggestion.get("stopped_early"):
        lines.append("The budget ended the rounds before one candidate was left.")
    return "\n".join(lines) + "\n"


def suggestion_points(suggestion: dict[str, Any]) -> list[Point]:
    """Candidates on the frontier: predicted validation accuracy (its 95% interval) against predicted cost."""
    points = []
    for row in suggestion["candidates"]:
        low, high = row["interval"]
        point = Point(row["name"], row["predicted_val_acc"] * 100, low * 100, high * 100)
        point.x["trainable_params"] = (float(row["trainable_params"]),) * 3
        point.x["train_time_s"] = (float(row["predicted_time_s"]),) * 3
        point.x["peak_memory_bytes"] = (row["predicted_peak_bytes"] / 2**20,) * 3
        points.append(point)
    return points


def suggestion_figures(suggestion: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": rounds_figure(suggestion["rounds"], suggestion.get("pick")),
            "frontier": frontier_figure(suggestion_points(suggestion), "predicted validation accuracy (%)", True,
                                        "unfreeze suggest: predicted accuracy against predicted cost",
                                        bars="95% interval")}


def plot(suggestion: dict[str, Any], path: str | Path) -> list[Path]:
    """The rounds into `path`, the candidates' frontier beside it (`<stem>.frontier<suffix>`)."""
    figures = suggestion_figures(suggestion)
    written = []
    if figures["rounds"] is not None:
        written.append(save(figures["rounds"], path))
    if figures["frontier"] is not None:
        written.append(save(figures["frontier"], sibling(path, "frontier")))
    return written
