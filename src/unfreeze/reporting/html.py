"""`unfreeze report DIR --html FILE`: one self-contained page that opens without a network.

Everything is inline: the CSS, the charts (matplotlib's SVG, the same drawings as `--plot`), the data
the page's script reads, and the script. A sweep folder gives the results table (published values
beside ours, mean ± std, links per run), the frontier of the main metric against cost and the loss
curves per row; a suggest folder gives its ranked candidates, their frontier and its rounds.

The script adds tooltips to the frontier points, sorts the table by a clicked column, and, once it has
run without an error, writes what it counted into `#report-status` (`data-rows`, `data-points`) and
sets `data-report="ready"` on the page: what a headless browser checks (tests/test_report_browser.py).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from unfreeze.reporting import charts
from unfreeze.files import atomic_write_text
from unfreeze.reporting.links import LABELS, href, present_kinds, tracker_text

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --band: #f6f8fa; --accent: #0969da; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px; color: var(--ink);
       font: 14px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--band); cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.failed, td.skipped, td.pending { color: var(--bad); }
a { color: var(--accent); }
figure, .scroll { margin: 12px 0; overflow-x: auto; } figure svg { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; }
td.kept { background: #dafbe1; font-weight: 600; } td.out { color: var(--muted); text-decoration: line-through; }
#report-status { color: var(--muted); font-size: 12px; margin-top: 32px; }
"""

SCRIPT = """
(function () {
  "use strict";
  var page = document.documentElement, status = document.getElementById("report-status");
  window.addEventListener("error", function (event) {
    page.setAttribute("data-report", "error");
    status.textContent = "error: " + event.message;
  });
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var perCost = {};
  document.querySelectorAll('g[id^="point-"]').forEach(function (group) {
    var parts = group.id.split("-"), cost = parts[1], point = data.points[Number(parts[2])];
    if (!point) { throw new Error("no data for " + group.id); }
    perCost[cost] = (perCost[cost] || 0) + 1;
    var title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = point.name + ": " + point.text;
    group.appendChild(title);
    group.setAttribute("data-row", point.name);
  });
  var table = document.getElementById("results");
  table.querySelectorAll("thead th").forEach(function (header, column) {
    header.addEventListener("click", function () {
      var down = header.getAttribute("aria-sort") === "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", down ? "descending" : "ascending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column], y = b.cells[column];
        var p = parseFloat(x.getAttribute("data-sort")), q = parseFloat(y.getAttribute("data-sort"));
        var order = (!isNaN(p) && !isNaN(q)) ? p - q : x.textContent.localeCompare(y.textContent);
        return down ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  var rows = table.querySelectorAll("tbody tr[data-row]").length;
  var first = data.costs.length ? (perCost[data.costs[0]] || 0) : 0;
  status.setAttribute("data-rows", String(rows));
  status.setAttribute("data-points", String(first));
  status.textContent = "Checked by the page: " + rows + " table rows; frontier points per cost: " +
    (data.costs.map(function (c) { return c + " " + (perCost[c] || 0); }).join(", ") || "none") + ".";
  page.setAttribute("data-report", "ready");
})();
"""


def write_page(path: str | Path, table: dict[str, Any] | None = None,
               suggestion: dict[str, Any] | None = None) -> Path:
    path = Path(path).expanduser()
    page_dir = path.resolve().parent
    text = sweep_page(table, page_dir) if table is not None else suggest_page(suggestion, page_dir)
    return atomic_write_text(path, text)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def document(title: str, sections: list[str], data: dict[str, Any]) -> str:
    payload = json.dumps(data, default=str).replace("</", "<\\/")  # nothing in the data can close the script
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>", *sections,
        '<p id="report-status">The page script has not run.</p>',
        f'<script type="application/json" id="report-data">{payload}</script>',
        f"<script>{SCRIPT}</script>", "</body></html>", ""])


def figure(kind: str, svg_text: str | None, caption: str, points: int | None = None) -> str:
    if svg_text is None:
        return f'<p class="meta" data-chart="{kind}">{esc(caption)}</p>'
    count = f' data-points="{points}"' if points is not None else ""
    return f'<figure data-chart="{kind}"{count}>{svg_text}<figcaption>{esc(caption)}</figcaption></figure>'


def point_data(points: list[charts.Point], digits: int = 2) -> list[dict[str, Any]]:
    """What a point's tooltip says: the metric (± spread) and each cost."""
    result = []
    for p in points:
        spread = f" ± {(p.y_high - p.y_low) / 2:.{digits}f}" if p.y_high > p.y_low else ""
        costs = ", ".join(f"{label} {p.x[key][0]:,.4g}" for key, label, _ in charts.COSTS if key in p.x)
        result.append({"name": p.name, "text": f"{p.y:.{digits}f}{spread} ({p.seeds} seed(s)); {costs}"})
    return result


def frontier_section(figure_object, points: list[charts.Point], higher: bool,
                     said_point: str = "Each row a point (mean over seeds, bars ± std)") -> str:
    costs = [key for key, _, _ in charts.COSTS if any(key in p.x for p in points)]
    svg_text = charts.svg(figure_object, "frontier") if figure_object is not None else None
    fronts = {key: [points[i].name for i in charts.pareto(points, key, higher)] for key in costs}
    said = "; ".join(f"{key}: {', '.join(names)}" for key, names in fronts.items())
    caption = (f"{said_point}; red: the Pareto front ({said})." if svg_text
               else "No frontier: no finished row recorded the main metric with a cost.")
    return "<h2>Frontier</h2>" + figure("frontier", svg_text, caption, len(points))


# --- a sweep folder ------------------------------------------------------------------------------------


def results_table(table: dict[str, Any], page_dir: Path) -> str:
    from unfreeze.reporting.table import format_value, metric_cell, seeds_cell

    columns, kinds = table["columns"], present_kinds(table["rows"])
    head = ["#", "Row"] + [c["label"] for c in columns] + ["Seeds"] + [LABELS[k] for k in kinds]
    lines = ['<div class="scroll"><table id="results"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
             + "</tr></thead><tbody>"]
    for row in table["rows"]:
        cells = [f'<td class="num" data-sort="{row["index"]}">{esc(row["index"])}</td>',
                 f'<td title="{esc(row.get("note") or row.get("label") or "")}">{esc(row["name"])}</td>']
        for column in columns:
            if column["source"] == "option":
                cells.append(f"<td>{esc(format_value(row['options'].get(column['key']), column['format']))}</td>")
            else:
                mean = row["metrics"][column["key"]]["mean"]
                sort = f' data-sort="{mean}"' if isinstance(mean, (int, float)) and row["status"] == "finished" else ""
                cells.append(f'<td class="num {esc(row["status"])}"{sort}>{esc(metric_cell(row, column))}</td>')
        cells.append(f"<td>{esc(seeds_cell(row))}</td>")
        cells += [f"<td>{link_cell(row, kind, Path(table['dir']), page_dir)}</td>" for kind in kinds]
        lines.append(f'<tr data-row="{esc(row["name"])}" data-status="{esc(row["status"])}">' + "".join(cells) + "</tr>")
    return "\n".join(lines + ["</tbody></table></div>"])


def link_cell(row: dict[str, Any], kind: str, sweep_dir: Path, page_dir: Path) -> str:
    parts = []
    for seed, links in row.get("links", {}).items():
        link = links.get(kind)
        if not link:
            continue
        if kind == "tracker":
            target = link.get("url") or link.get("location")
            tip = link.get("view") or tracker_text(link)
            parts.append(f'<a href="{esc(href(str(target), sweep_dir, page_dir))}" title="{esc(tip)}">seed {esc(seed)}</a>')
        else:
            parts.append(f'<a href="{esc(href(link, sweep_dir, page_dir))}" title="{esc(link)}">seed {esc(seed)}</a>')
    return " ".join(parts)


def notes(markdown: str) -> str:
    """The Markdown table's notes (published source, overrides, runs without a result) as paragraphs."""
    text = markdown.split("\n\n", 1)[1] if "\n\n" in markdown else ""
    items = [line[2:] if line.startswith("- ") else line for line in text.splitlines()
             if line.strip() and not line.startswith("Links: ")]  # the page's links are relative to the page
    return "<ul class=\"meta\">" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def sweep_page(table: dict[str, Any], page_dir: Path) -> str:
    from unfreeze.reporting.table import render_markdown, runs_of

    runs = runs_of(table)
    figures = charts.sweep_figures(table, runs)
    points = charts.sweep_points(table, runs)
    key = str(table["main_metric"])
    seeds = sum(len(row["seeds"]) for row in table["rows"])
    title = f"unfreeze report: {Path(table['dir']).name}"
    curves = charts.svg(figures["curves"], "curves") if figures["curves"] is not None else None
    sections = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(table["command"])} sweep in {esc(table["dir"])}: {len(table["rows"])} rows, '
        f"{seeds} finished runs; main metric {esc(key)}. Metrics: mean ± sample std over seeds; (pub. x): "
        "the published value.</p>",
        "<h2>Results</h2>", results_table(table, page_dir), notes(render_markdown(table)),
        frontier_section(figures["frontier"], points, charts.higher_is_better(key)),
        "<h2>Loss curves</h2>",
        figure("curves", curves, "Per row: training and validation loss, mean over seeds, shaded ± std."
               if curves else "No loss curves: the runs recorded no loss history."),
    ]
    costs = [k for k, _, _ in charts.COSTS if any(k in p.x for p in points)]
    return document(title, sections, {"kind": "sweep", "points": point_data(points), "costs": costs})


# --- a suggest folder ----------------------------------------------------------------------------------


def candidates_table(suggestion: dict[str, Any]) -> str:
    from unfreeze.reporting.suggest import HEADER, candidate_cells

    lines = ['<table id="results"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr></thead><tbody>"]
    for row in suggestion["candidates"]:
        cells = candidate_cells(row, suggestion["rounds"])
        sorts = [row["rank"], None, row["predicted_val_acc"], row["trainable_params"], row["predicted_time_s"],
                 row["predicted_peak_bytes"], cells[-1]]
        tds = [f'<td class="num" data-sort="{s}">{esc(c)}</td>' if s is not None else f"<td>{esc(c)}</td>"
               for c, s in zip(cells, sorts)]
        lines.append(f'<tr data-row="{esc(row["name"])}">' + "".join(tds) + "</tr>")
    return "\n".join(lines + ["</tbody></table>"])


def rounds_table(suggestion: dict[str, Any]) -> str:
    """Candidates down, rounds across: accuracy, loss and steps where scored; kept ones marked."""
    rounds = suggestion["rounds"]
    head = "".join(f"<th>Round {k} (≤{max(r['steps'].values())} steps)</th>" for k, r in enumerate(rounds, start=1))
    lines = [f'<table id="rounds"><thead><tr><th>Candidate</th>{head}</tr></thead><tbody>']
    for row in suggestion["candidates"]:
        name, cells = row["name"], []
        for k, rung in enumerate(rounds, start=1):
            if name not in rung["scores"]:
                cells.append("<td></td>")
                continue
            accuracy, loss = rung["scores"][name]
            kept = name in rung["kept"]
            cells.append(f'<td class="{"kept" if kept else "out"}" data-round="{k}">{accuracy * 100:.1f}% · loss '
                         f"{loss:.3f} · {rung['steps'][name]} steps</td>")
        lines.append(f'<tr data-candidate="{esc(name)}"><td>{esc(name)}</td>{"".join(cells)}</tr>')
    return "\n".join(lines + ["</tbody></table>"])


def suggest_page(suggestion: dict[str, Any], page_dir: Path) -> str:
    from unfreeze.reporting.suggest import suggestion_figures, suggestion_points

    figures = suggestion_figures(suggestion)
    points = suggestion_points(suggestion)
    title = f"unfreeze suggest: {Path(suggestion['dir']).name}"
    rounds = charts.svg(figures["rounds"], "rounds") if figures["rounds"] is not None else None
    early = " The budget ended the rounds before one candidate was left." if suggestion.get("stopped_early") else ""
    sections = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">Pick: <strong>{esc(suggestion["pick"])}</strong>. Budget {esc(suggestion["budget"])}: '
        f'{esc(suggestion["spent_s"])} s spent of a predicted sweep of {esc(suggestion["sweep_predicted_s"])} s.'
        f"{esc(early)}</p>",
        "<h2>Candidates</h2>", candidates_table(suggestion),
        frontier_section(figures["frontier"], points, True, "Each candidate a point (bars: the 95% interval of its "
                         "validation accuracy)"),
        "<h2>Rounds</h2>", figure("rounds", rounds, "Successive halving: validation accuracy of each candidate in "
                                               "each round it played (o: kept, x: eliminated)."),
        rounds_table(suggestion),
    ]
    costs = [k for k, _, _ in charts.COSTS]
    return document(title, sections, {"kind": "suggest", "points": point_data(points), "costs": costs})
