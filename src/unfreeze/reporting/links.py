"""What the report links per run: its predictions file, its model folder and its tracked run.

The convention, read from each finished run folder (`runs/<row>/seed-<s>/`):
* `metrics.json` may name them: `predictions_file` and `model_dir` (paths relative to the run folder,
  or absolute) and `tracker_run` (what `unfreeze.tracking.Tracker.reference()` returns: backend, run,
  location, url, view; or a plain URL or path);
* otherwise the files present are used: the first of PREDICTION_FILES, and `final/` as the model folder.
Paths come back relative to the sweep folder when they lie inside it (the folder can be moved), else
absolute. A run with none of these has no links; the report then shows no link columns at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PREDICTION_FILES = ("predictions.jsonl", "predictions.csv", "predictions.json", "test_predictions.jsonl",
                    "test_results.json")
MODEL_DIRS = ("final",)
KINDS = ("predictions", "model", "tracker")
LABELS = {"predictions": "Predictions", "model": "Model", "tracker": "Tracker run"}


def run_links(run_dir: Path, metrics: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """{"predictions": path | None, "model": path | None, "tracker": {...} | None} for one run."""
    predictions = _declared(run_dir, metrics.get("predictions_file"))
    if predictions is None:
        predictions = next((run_dir / name for name in PREDICTION_FILES if (run_dir / name).is_file()), None)
    model = _declared(run_dir, metrics.get("model_dir"))
    if model is None:
        model = next((run_dir / name for name in MODEL_DIRS if (run_dir / name).is_dir()), None)
    return {"predictions": _shown(predictions, sweep_dir), "model": _shown(model, sweep_dir),
            "tracker": tracker_link(metrics.get("tracker_run"))}


def _declared(run_dir: Path, value: Any) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else run_dir / path


def _shown(path: Path | None, sweep_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(sweep_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def tracker_link(reference: Any) -> dict[str, Any] | None:
    """A tracked run as {"backend", "run", "url", "location", "view"} (missing parts None)."""
    if isinstance(reference, str) and reference.strip():
        is_url = reference.startswith(("http://", "https://"))
        return {"backend": None, "run": None, "url": reference if is_url else None, "location": reference, "view": None}
    if isinstance(reference, dict) and (reference.get("url") or reference.get("location")):
        return {key: reference.get(key) for key in ("backend", "run", "url", "location", "view")}
    return None


def present_kinds(rows: list[dict[str, Any]]) -> list[str]:
    """The kinds of link that at least one run of the table has (the link columns to show)."""
    return [kind for kind in KINDS
            if any(links.get(kind) for row in rows for links in row.get("links", {}).values())]


def tracker_text(link: dict[str, Any]) -> str:
    """A tracked run in one short phrase: its URL, else `backend run` or its location."""
    if link.get("url"):
        return link["url"]
    if link.get("backend") and link.get("run"):
        return f"{link['backend']} {link['run']}"
    return str(link.get("location"))


def markdown_cell(row: dict[str, Any], kind: str) -> str:
    """`[seed 1](path) [seed 2](path)`: one link per finished seed that has one."""
    parts = []
    for seed, links in row.get("links", {}).items():
        link = links.get(kind)
        if not link:
            continue
        if kind == "tracker":
            target = link.get("url") or link.get("location")
            parts.append(f"[seed {seed}]({target})" if link.get("url") else f"seed {seed}: {tracker_text(link)}")
        else:
            parts.append(f"[seed {seed}]({link})")
    return " ".join(parts)


def csv_cell(row: dict[str, Any], kind: str) -> str:
    values = []
    for links in row.get("links", {}).values():
        link = links.get(kind)
        if link:
            values.append(link.get("url") or link.get("location") if kind == "tracker" else link)
    return "; ".join(str(v) for v in values)


def href(path_or_url: str, sweep_dir: Path, page_dir: Path) -> str:
    """A link target for a page written in `page_dir`: URLs as they are, sweep paths made relative to it."""
    if path_or_url.startswith(("http://", "https://", "file://")):
        return path_or_url
    path = Path(path_or_url)
    target = path if path.is_absolute() else sweep_dir / path
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()
