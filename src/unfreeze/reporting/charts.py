"""The report's charts, drawn with matplotlib: the main metric per row (bars), its frontier against cost
(trainable parameters, training time, peak memory), the loss curves per row, and a suggest folder's
rounds. Each chart is a figure saved as a file (`--plot`, any format matplotlib writes) or returned as
inline SVG text for the HTML page (`--html`), so both show the same drawing.

In the SVG, every frontier point is a group with the id `point-<cost key>-<i>` (i: the point's position
in the list given), so a page or a test can count and address them.
"""

from __future__ import annotations

import io
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unfreeze.errors import UsageError

# (metrics key, axis label, scale to the axis' unit)
COSTS = (("trainable_params", "trainable parameters", 1.0),
         ("train_time_s", "training time (s)", 1.0),
         ("peak_memory_bytes", "peak memory (MiB)", 1 / 2**20))
FRONT_COLOR, POINT_COLOR = "tab:red", "tab:blue"


@dataclass
class Point:
    """One row (or suggest candidate): the main metric's mean and spread, and its costs (mean, low, high)."""

    name: str
    y: float
    y_low: float
    y_high: float
    x: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    seeds: int = 1


@dataclass
class Curves:
    """One row's loss curves: label -> (steps, mean, low, high) over its seeds."""

    name: str
    lines: dict[str, tuple[list[float], list[float], list[float], list[float]]]
    seeds: int


def higher_is_better(key: str) -> bool:
    return not any(word in key.lower() for word in ("loss", "error", "perplexity", "time"))


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, mean - std, mean + std) with the sample std; no spread for one value."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, mean - std, mean + std


def main_column(table: dict[str, Any]) -> dict[str, Any]:
    """The column of the sweep's main metric (what --plot draws)."""
    key = table["main_metric"]
    for column in table["columns"]:
        if column["key"] == key and column["source"] == "metric":
            return column
    raise UsageError(f"--plot: the {table['command']!r} sweep in {table['dir']} names no metric column to plot "
                     f"(main metric {key!r}); leave --plot out")


def axis_scale(column: dict[str, Any] | None) -> tuple[float, str]:
    """How a metric column is drawn: percentages as %, seconds as minutes."""
    fmt = column["format"] if column else ""
    return {"percent": (100.0, " (%)"), "minutes": (1 / 60, " (min)")}.get(fmt, (1.0, ""))


# --- points and curves of a sweep folder ----------------------------------------------------------------


def sweep_points(table: dict[str, Any], runs: dict[str, dict[int, dict]]) -> list[Point]:
    """A point per finished row with a numeric main metric; costs where its runs recorded them."""
    key = table["main_metric"]
    column = next((c for c in table["columns"] if c["key"] == key), None)
    scale, _ = axis_scale(column)
    points = []
    for row in table["rows"]:
        metrics = list(runs.get(row["name"], {}).values())
        values = [m[key] * scale for m in metrics if _number(m.get(key))]
        if row["status"] != "finished" or not values:
            continue
        mean, low, high = spread(values)
        point = Point(row["name"], mean, low, high, seeds=len(values))
        for cost, _, unit in COSTS:
            costs = [m[cost] * unit for m in metrics if _number(m.get(cost))]
            if costs:
                point.x[cost] = spread(costs)
        points.append(point)
    return points


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_curves(metrics: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """A run's loss curves: classify's `history` (one value every eval_every steps) or sft's step records."""
    curves = {}
    history = metrics.get("history")
    if isinstance(history, dict):
        every = (metrics.get("config") or {}).get("eval_every") or 1
        for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            values = history.get(key)
            if isinstance(values, list) and values and all(_number(v) for v in values):
                curves[label] = ([float(i * every) for i in range(len(values))], [float(v) for v in values])
    for key, records, label in (("train_loss", "train_history", "training loss"),
                                ("eval_loss", "eval_history", "validation loss")):
        items = [r for r in metrics.get(records) or [] if isinstance(r, dict) and _number(r.get(key))
                 and _number(r.get("step"))]
        if items:
            curves[label] = ([float(r["step"]) for r in items], [float(r[key]) for r in items])
    return curves


def sweep_curves(table: dict[str, Any], runs: dict[str, dict[int, dict]]) -> list[Curves]:
    """Per finished row, each loss curve averaged over its seeds at the steps every seed recorded."""
    result = []
    for row in table["rows"]:
        per_seed = [run_curves(m) for m in runs.get(row["name"], {}).values()]
        lines = {}
        for label in ("training loss", "validation loss"):
            seeds = [dict(zip(*curves[label])) for curves in per_seed if label in curves]
            if not seeds:
                continue
            steps = sorted(set.intersection(*(set(s) for s in seeds)))
            stats = [spread([s[step] for s in seeds]) for step in steps]
            lines[label] = (steps, [m for m, _, _ in stats], [lo for _, lo, _ in stats], [hi for _, _, hi in stats])
        if lines:
            result.append(Curves(row["name"], lines, len(per_seed)))
    return result


def pareto(points: list[Point], cost: str, higher: bool) -> list[int]:
    """Indices of the points no other point beats: at most the cost and at least as good, one strictly."""
    sign = 1 if higher else -1
    front = []
    for i, p in enumerate(points):
        if cost not in p.x:
            continue
        beaten = any(cost in q.x and q.x[cost][0] <= p.x[cost][0] and sign * q.y >= sign * p.y
                     and (q.x[cost][0] < p.x[cost][0] or sign * q.y > sign * p.y) for q in points)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i].x[cost][0])


# --- figures -----------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frontier_figure(points: list[Point], ylabel: str, higher: bool, title: str, bars: str = "± std over seeds"):
    """One panel per cost that some point recorded: each point with its spread, the Pareto front marked."""
    costs = [c for c in COSTS if any(c[0] in p.x for p in points)]
    if not points or not costs:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(costs), figsize=(4.4 * len(costs), 3.9), squeeze=False, sharey=True)
    for axis, (cost, label, _) in zip(axes[0], costs):
        front = pareto(points, cost, higher)
        for i, p in enumerate(points):
            if cost not in p.x:
                continue
            x, x_low, x_high = p.x[cost]
            on_front = i in front
            bars = axis.errorbar([x], [p.y], xerr=[[x - x_low], [x_high - x]], yerr=[[p.y - p.y_low], [p.y_high - p.y]],
                                 fmt="o", color=FRONT_COLOR if on_front else POINT_COLOR, ecolor="0.6", capsize=2,
                                 markersize=7 if on_front else 5)
            bars.lines[0].set_gid(f"point-{cost}-{i}")
            axis.annotate(p.name, (x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if len(front) > 1:
            axis.step([points[i].x[cost][0] for i in front], [points[i].y for i in front], where="post",
                      color=FRONT_COLOR, linewidth=1, alpha=0.6, label="Pareto front")
        values = [p.x[cost][0] for p in points if cost in p.x and p.x[cost][0] > 0]
        if values and max(values) / min(values) > 20:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    figure.suptitle(f"{title} (red: the Pareto front; bars: {bars})", fontsize=10)
    figure.tight_layout()
    return figure


def curves_figure(curves: list[Curves], title: str):
    """Small multiples, one panel per row: mean over seeds, shaded ± std."""
    if not curves:
        return None
    plt = _pyplot()
    columns = min(4, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.6 * rows), squeeze=False, sharey=True)
    for axis, row in zip(axes.flat, curves):
        for color, (label, (steps, mean, low, high)) in zip(("tab:blue", "tab:orange"), row.lines.items()):
            axis.plot(steps, mean, color=color, label=label, linewidth=1.3)
            if row.seeds > 1:
                axis.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        axis.set_title(f"{row.name} ({row.seeds} seed{'s' * (row.seeds > 1)})", fontsize=9)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(curves):]:
        axis.set_visible(False)
    axes[0][0].legend(fontsize=7)
    figure.supxlabel("optimizer step", fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def rounds_figure(rounds: list[dict[str, Any]], pick: str | None):
    """A suggest folder's successive halving: each candidate's validation accuracy per round it played."""
    if not rounds:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    names = list(dict.fromkeys(name for r in rounds for name in r["scores"]))
    for number, name in enumerate(names):
        played = [(k + 1, r["scores"][name][0], name in r["kept"]) for k, r in enumerate(rounds) if name in r["scores"]]
        color = f"C{number % 10}"
        axis.plot([k for k, _, _ in played], [a for _, a, _ in played], color=color, linewidth=1, alpha=0.8)
        for k, accuracy, kept in played:
            axis.plot([k], [accuracy], "o" if kept else "x", color=color, markersize=6)
        last = played[-1]
        axis.annotate(name + (" (pick)" if name == pick else ""), (last[0], last[1]), textcoords="offset points",
                      xytext=(5, 0), fontsize=7, va="center")
    axis.set_xticks(range(1, len(rounds) + 1))
    axis.set_xticklabels([f"{k + 1}\n≤{max(r['steps'].values())} steps" for k, r in enumerate(rounds)], fontsize=8)
    axis.set_xlim(0.7, len(rounds) + 0.9)
    axis.set_xlabel("round (o: kept, x: eliminated)")
    axis.set_ylabel("validation accuracy")
    axis.set_title("unfreeze suggest: successive halving")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def bars_figure(table: dict[str, Any]):
    """Bar per row of the main metric (mean, error bar = std), published values as markers."""
    plt = _pyplot()
    key = table["main_metric"]
    column = main_column(table)
    scale, unit = axis_scale(column)
    rows = table["rows"]
    means, errors, published = [], [], []
    for row in rows:
        summary = row["metrics"][key]
        ok = row["status"] == "finished" and isinstance(summary["mean"], (int, float))
        means.append(summary["mean"] * scale if ok else 0.0)
        errors.append((summary["std"] or 0.0) * scale if ok else 0.0)
        pub = summary.get("published")
        published.append(pub * scale if isinstance(pub, (int, float)) else math.nan)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 1.5), 4.0))
    positions = list(range(len(rows)))
    axes.bar(positions, means, yerr=errors, capsize=3, color="tab:blue", label="ours (mean ± std)")
    if any(not math.isnan(p) for p in published):
        axes.plot(positions, published, "kD", markerfacecolor="none", linestyle="none", label="published")
    for position, row in zip(positions, rows):
        if row["status"] != "finished":
            axes.text(position, 0, row["status"], rotation=90, ha="center", va="bottom", fontsize=8, color="tab:red")
    axes.set_xticks(positions)
    axes.set_xticklabels([row["name"] for row in rows], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel(column["label"] + unit)
    axes.set_title(f"{table['command']}: {column['label']} per row")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def sweep_figures(table: dict[str, Any], runs: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """The frontier and the loss curves of a sweep folder (None where its runs did not record them)."""
    key = table["main_metric"]
    column = next((c for c in table["columns"] if c["key"] == key), None)
    _, unit = axis_scale(column)
    label = (column["label"] if column else str(key)) + unit
    frontier = frontier_figure(sweep_points(table, runs), label, higher_is_better(str(key)),
                               f"{table['command']}: {label} against cost") if key else None
    curves = curves_figure(sweep_curves(table, runs), f"{table['command']}: loss curves per row "
                                                      "(mean over seeds, shaded ± std)")
    return {"frontier": frontier, "curves": curves}


# --- output ------------------------------------------------------------------------------------------------


def save(figure, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def svg(figure, salt: str) -> str:
    """The figure as an inline <svg> element: text kept as text, ids salted per chart so that several
    charts on one page never share a definition's id."""
    import matplotlib

    plt = _pyplot()
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def sibling(path: str | Path, chart: str) -> Path:
    """Where --plot FILE puts another chart: runs/sw/acc.png -> runs/sw/acc.frontier.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{chart}{path.suffix}")


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)
