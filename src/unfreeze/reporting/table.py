"""`unfreeze report DIR`: the results table of a sweep folder, in the seed table's layout.

Everything comes from the folder: `sweep.json` (rows, options, published values, columns), each
finished run's `runs/<row>/seed-<s>/metrics.json`, and `failed.json`. One table row per sweep row;
with several seeds a metric reads `mean ± std` (sample standard deviation, n-1), and where the sweep
file stores a published value it stands beside ours: `95.33 ± 0.47% (pub. 95.00%)`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unfreeze.errors import UsageError
from unfreeze.files import check_output_path, read_json_or_explain
from unfreeze.reporting.links import LABELS, csv_cell, markdown_cell, present_kinds, run_links

SEED_DIR = re.compile(r"^seed-(-?\d+)$")


@dataclass
class ReportConfig:
    """Print the results table of a sweep folder, in the seed table's layout (mean ± std over seeds)."""

    dir: str
    """a sweep output folder (the --out of `unfreeze sweep`; also the first bare word)"""
    format: Literal["md", "csv", "json"] = "md"
    """md: Markdown table; csv: raw numbers; json: everything"""
    plot: str | None = None
    """also draw the charts: a bar chart of the main metric per row into this file (.png, .pdf, .svg, .jpg, ...),
    and beside it FILE's name with .frontier (the main metric against trainable parameters, training time
    and peak memory, the Pareto front marked) and .curves (loss curves per row); for a suggest folder, its
    rounds into this file and .frontier beside it"""
    html: str | None = None
    """also write one self-contained HTML page into this file (the table with its links, the frontier, the
    loss curves; for a suggest folder its rounds); it opens without a network"""


def run(args: ReportConfig) -> int:
    from unfreeze.reporting import html as report_html, suggest as report_suggest

    if args.plot is not None:
        check_plot_path(args.plot)
    if args.html is not None:
        check_output_path(args.html, "--html", "file")
    if report_suggest.is_suggest_folder(args.dir) and not (Path(args.dir) / "sweep.json").is_file():
        suggestion = report_suggest.build_suggestion(args.dir)
        print(report_suggest.render_suggestion(suggestion, args.format), end="")
        if args.plot:
            report_suggest.plot(suggestion, args.plot)
        if args.html:
            report_html.write_page(args.html, suggestion=suggestion)
        return 0
    table = build_table(args.dir)
    if args.plot is not None:
        main_column(table)  # a sweep without a plottable metric fails before the table is printed
    print(render(table, args.format), end="")
    if args.plot:
        plot(table, args.plot)
    if args.html:
        report_html.write_page(args.html, table=table)
    return 0


def plot_formats() -> dict[str, str]:
    """File suffixes matplotlib can write here (suffix -> description), e.g. png, pdf, svg, jpg."""
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


def check_plot_path(path: str) -> Path:
    """The chart's file name says its format: one matplotlib writes, so nothing is renamed or refused late."""
    target = check_output_path(path, "--plot", "file")
    suffix = target.suffix.lower().lstrip(".")
    formats = plot_formats()
    if suffix not in formats:
        choices = ", ".join(f".{name}" for name in sorted(formats))
        said = "has no suffix" if not suffix else f"ends in .{suffix}, which matplotlib cannot write"
        raise UsageError(f"--plot {path} {said}; name the file with one of: {choices}")
    return target


# --- collecting -----------------------------------------------------------------------------------


def build_table(directory: str | Path) -> dict[str, Any]:
    """Aggregate a sweep folder into a plain dict (what `--format json` prints)."""
    directory = Path(directory)
    if not (directory / "sweep.json").is_file():
        raise UsageError(f"{directory} is not a sweep folder (no sweep.json) nor a suggest folder (no suggestion.json); "
                         "pass the --out of `unfreeze sweep` or of `unfreeze suggest`")
    sweep = read_sweep_json(directory / "sweep.json")
    failures_path = directory / "failed.json"
    failures = {}
    if failures_path.is_file():
        failures = read_json_or_explain(failures_path, "delete it (the failed runs are retried by the next sweep)")
        if not isinstance(failures, dict) or not all(isinstance(f, dict) for f in failures.values()):
            raise UsageError(f"{failures_path} is not a mapping of runs to errors; delete it")
    columns = sweep["columns"]
    selected = set(sweep.get("selected", []))
    rows = []
    for row in sweep["rows"]:
        runs = finished_runs(directory, row["name"])
        problems = [
            {"seed": f["seed"], "status": f.get("status", "failed"), "error": f.get("error")}
            for f in failures.values()
            if f.get("row") == row["name"] and f.get("seed") not in runs
        ]
        if not runs and not problems and row["name"] not in selected:
            continue  # a row of the file that was never asked for
        if runs:
            status = "finished"
        elif problems:
            status = "failed" if any(p["status"] == "failed" for p in problems) else "skipped"
        else:
            status = "pending"
        metrics = {}
        for column in columns:
            if column["source"] != "metric":
                continue
            values = [m[column["key"]] for m in runs.values() if m.get(column["key"]) is not None]
            metrics[column["key"]] = {**summarize(values), "published": row.get("published", {}).get(column["key"])}
        rows.append({
            "index": row["index"],
            "name": row["name"],
            "label": row.get("label"),
            "note": row.get("note"),
            "init_from": row.get("init_from"),
            "status": status,
            "seeds": sorted(runs),
            "problems": sorted(problems, key=lambda p: p["seed"]),
            "options": {c["key"]: option_value(row["config"], c) for c in columns if c["source"] == "option"},
            "metrics": metrics,
            "links": {seed: run_links(directory / "runs" / row["name"] / f"seed-{seed}", m, directory)
                      for seed, m in runs.items()},
        })
    return {
        "dir": str(directory),
        "command": sweep["command"],
        "main_metric": sweep["main_metric"],
        "columns": columns,
        "overrides": sweep.get("overrides", {}),
        "source": sweep.get("source"),
        "rows": rows,
    }


SWEEP_KEYS = {"command": str, "main_metric": (str, type(None)), "columns": list, "rows": list}


def read_sweep_json(path: Path) -> dict[str, Any]:
    """sweep.json, with the keys the report reads checked (a cut or foreign file is one error line)."""
    fix = "rerun the same `unfreeze sweep` command to rewrite it (finished runs are kept)"
    sweep = read_json_or_explain(path, fix)
    if not isinstance(sweep, dict):
        raise UsageError(f"{path} is not a sweep description (a JSON object); {fix}")
    for key, kind in SWEEP_KEYS.items():
        if not isinstance(sweep.get(key), kind):
            raise UsageError(f"{path} lacks a valid {key!r}; {fix}")
    for column in sweep["columns"]:
        if not isinstance(column, dict) or not {"key", "label", "source", "format"} <= set(column):
            raise UsageError(f"{path} has a malformed column {column!r}; {fix}")
    for row in sweep["rows"]:
        if (not isinstance(row, dict) or not isinstance(row.get("name"), str) or "index" not in row
                or not isinstance(row.get("config"), dict) or not isinstance(row.get("published", {}), dict)):
            raise UsageError(f"{path} has a malformed row {str(row)[:80]}; {fix}")
    return sweep


def finished_runs(directory: Path, row: str) -> dict[int, dict[str, Any]]:
    """seed -> metrics of every finished run of a row (partial folders never count)."""
    runs = {}
    folder = directory / "runs" / row
    if folder.is_dir():
        for child in folder.iterdir():
            match = SEED_DIR.match(child.name)
            if match and (child / "metrics.json").is_file():
                metrics = read_json_or_explain(child / "metrics.json", f"delete {child} to run it again")
                if not isinstance(metrics, dict):
                    raise UsageError(f"{child / 'metrics.json'} is not a JSON object; delete {child} to run it again")
                runs[int(match.group(1))] = metrics
    return dict(sorted(runs.items()))


def option_value(config: dict, column: dict) -> Any:
    """A row's option for a column; a `prefer`red option wins when set (a .gguf path shows its file name), and a
    `detail` option the run sets follows it (a GPT-2 size whose --model_config made it two layers says so)."""
    preferred = config.get(column["prefer"]) if column.get("prefer") else None
    if preferred is None:
        value = config.get(column["key"])
    else:
        value = Path(preferred).name if str(preferred).lower().endswith(".gguf") else preferred
    detail = config.get(column["detail"]) if column.get("detail") else None
    return f"{value} {detail}" if detail not in (None, "", "null", "{}") else value


def summarize(values: list[Any]) -> dict[str, Any]:
    """mean, sample std (None for fewer than two numbers), n; text values are listed instead."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if values and len(numbers) == len(values):
        mean = statistics.fmean(numbers)
        std = statistics.stdev(numbers) if len(numbers) > 1 else None
        return {"mean": mean, "std": std, "n": len(numbers), "values": numbers}
    texts = sorted({str(v) for v in values})
    return {"mean": ", ".join(texts) if texts else None, "std": None, "n": len(values), "values": values}


# --- formatting -------------------------------------------------------------------------------------


def format_value(value: Any, fmt: str, std: float | None = None) -> str:
    """One number (optionally ± std) in a column's format; text passes through."""
    if value is None:
        return ""
    if fmt == "check":
        return "X" if value is True or str(value).lower() in ("true", "1", "yes") else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or fmt == "text":
        return str(value)
    spread = std is not None and not math.isclose(std, 0.0, abs_tol=1e-12)
    if fmt == "percent":
        return f"{value * 100:.2f} ± {std * 100:.2f}%" if spread else f"{value * 100:.2f}%"
    if fmt == "minutes":
        return f"{value / 60:.2f} ± {std / 60:.2f} min" if spread else f"{value / 60:.2f} min"
    if fmt == "int":
        return f"{value:,.0f} ± {std:,.0f}" if spread else f"{value:,.0f}"
    digits = int(fmt[5:]) if fmt.startswith("float") and fmt[5:].isdigit() else 4
    return f"{value:.{digits}f} ± {std:.{digits}f}" if spread else f"{value:.{digits}f}"


def seeds_cell(row: dict[str, Any]) -> str:
    finished = len(row["seeds"])
    failed = sum(p["status"] == "failed" for p in row["problems"])
    skipped = sum(p["status"] == "skipped" for p in row["problems"])
    extra = [f"{failed} failed"] * bool(failed) + [f"{skipped} skipped"] * bool(skipped)
    return f"{finished}" + (f" ({', '.join(extra)})" if extra else "")


def metric_cell(row: dict[str, Any], column: dict[str, Any]) -> str:
    summary = row["metrics"][column["key"]]
    if row["status"] in ("failed", "skipped", "pending"):
        ours = row["status"]
    else:
        ours = format_value(summary["mean"], column["format"], summary["std"]) or "-"
    published = summary.get("published")
    if published is not None:
        return f"{ours} (pub. {format_value(published, column['format'])})"
    return ours


def render(table: dict[str, Any], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps(table, indent=2, default=str) + "\n"
    if fmt == "csv":
        return render_csv(table)
    return render_markdown(table)


def render_markdown(table: dict[str, Any]) -> str:
    columns = table["columns"]
    kinds = present_kinds(table["rows"])
    header = ["#", "Row"] + [c["label"] for c in columns] + ["Seeds"] + [LABELS[kind] for kind in kinds]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table["rows"]:
        cells = [str(row["index"]), row["name"]]
        for column in columns:
            if column["source"] == "option":
                cells.append(format_value(row["options"].get(column["key"]), column["format"]))
            else:
                cells.append(metric_cell(row, column))
        cells.append(seeds_cell(row))
        cells += [markdown_cell(row, kind) for kind in kinds]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    notes = ["", "Metrics: mean ± sample standard deviation over seeds (n-1); (pub. x): the published value."]
    if table.get("source"):
        notes.append(f"Published values: {table['source']}")
    if kinds:
        notes.append(f"Links: paths relative to {table['dir']}.")
    if table.get("overrides"):
        notes.append("Overrides (--set): " + " ".join(f"{k}={_short(v)}" for k, v in table["overrides"].items()))
    starts: dict[str, list[str]] = {}
    for row in table["rows"]:
        if row.get("init_from"):
            starts.setdefault(row["init_from"], []).append(row["name"])
    for source, names in starts.items():
        notes.append(f"Started from the output of {source} (same seed; its model options apply): {', '.join(names)}")
    problems = [(row["name"], p) for row in table["rows"] for p in row["problems"]]
    if problems:
        notes.append("")
        notes.append("Runs without a result:")
        notes.extend(f"- {name} seed {p['seed']}: {p['status']}: {p['error']}" for name, p in problems)
    if not table["rows"]:
        notes.append("No rows have run yet.")
    return "\n".join(lines + notes) + "\n"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def render_csv(table: dict[str, Any]) -> str:
    """Raw numbers (fractions, seconds), one line per row."""
    columns = table["columns"]
    header = ["index", "row"] + [c["key"] for c in columns if c["source"] == "option"]
    for column in columns:
        if column["source"] == "metric":
            header += [f"{column['key']}_mean", f"{column['key']}_std", f"{column['key']}_published"]
    header += ["status", "seeds", "failed_seeds", "error", "predictions", "model", "tracker"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table["rows"]:
        line = [row["index"], row["name"]] + [row["options"].get(c["key"]) for c in columns if c["source"] == "option"]
        for column in columns:
            if column["source"] == "metric":
                summary = row["metrics"][column["key"]]
                line += [_blank(summary["mean"]), _blank(summary["std"]), _blank(summary.get("published"))]
        line += [row["status"], " ".join(map(str, row["seeds"])),
                 " ".join(str(p["seed"]) for p in row["problems"]),
                 "; ".join(p["error"] or "" for p in row["problems"])]
        line += [csv_cell(row, kind) for kind in ("predictions", "model", "tracker")]
        writer.writerow(line)
    return buffer.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


# --- the charts (report_charts) and the page (report_html) ---------------------------------------------


def main_column(table: dict[str, Any]) -> dict[str, Any]:
    from unfreeze.reporting.charts import main_column as column

    return column(table)


def runs_of(table: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Every finished run's metrics, per row (what the charts draw from)."""
    return {row["name"]: finished_runs(Path(table["dir"]), row["name"]) for row in table["rows"]}


def plot(table: dict[str, Any], path: str | Path) -> list[Path]:
    """The bar chart of the main metric into `path`; beside it the frontier and the loss curves, where
    the runs recorded what they need (`<stem>.frontier<suffix>`, `<stem>.curves<suffix>`)."""
    from unfreeze.reporting import charts

    written = [charts.save(charts.bars_figure(table), path)]
    for chart, figure in charts.sweep_figures(table, runs_of(table)).items():
        if figure is not None:
            written.append(charts.save(figure, charts.sibling(path, chart)))
    return written
