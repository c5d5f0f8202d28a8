"""`final/README.md`: the model card of every model unfreeze saves.

It says what a reader of the folder needs and cannot see in the weights: the base model and its weights, the
data, what trained (the summary the run logged), the command that reproduces the run, its metrics, the sweep
row it came from (when `unfreeze sweep` ran it), how to load it, and where plain `transformers` computes
something else than the run did.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

from unfreeze.files import read_json

# A run of `unfreeze sweep` works in <sweep out>/runs/<row>/seed-<s>.partial (renamed to seed-<s> when done).
_SWEEP_RUN = re.compile(r"^seed-(-?\d+)(\.partial)?$")


def command_line(task: str, config: Any) -> str:
    """`unfreeze TASK --key value ...` with every option that differs from its default (a reproducible command)."""
    words = ["unfreeze", task]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        if value == default or field.name in ("overwrite", "config"):
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        words += [f"--{field.name}", text]
    return " ".join(shlex.quote(word) for word in words)


def sweep_row(out: str | Path | None) -> dict | None:
    """The row of `unfreeze sweep` that ran the run in `out` (its name, seed, options, published values), if any."""
    if out is None:
        return None
    folder = Path(out).resolve()
    match = _SWEEP_RUN.match(folder.name)
    record = folder.parent.parent.parent / "sweep.json"
    if not match or folder.parent.parent.name != "runs" or not record.is_file():
        return None
    try:
        sweep = read_json(record)
    except (OSError, ValueError):
        return None
    row = next((r for r in sweep.get("rows", []) if r.get("name") == folder.parent.name), None)
    if row is None:
        return None
    return {"sweep_file": sweep.get("sweep_file"), "row": row.get("name"), "seed": int(match.group(1)),
            **{k: v for k, v in row.items() if k not in ("name",)}}


def _metric_rows(metrics: dict) -> list[str]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or key in ("device",):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        rows.append(f"| {key} | {shown} |")
    return rows


def model_card(*, task: str, base_model: str, weights: str, data: str, summary: list[str], command: str,
               metrics: dict, loading: str, notes: list[str], out: str | Path | None, pipeline_tag: str,
               library: str = "transformers") -> str:
    """The card's Markdown (with the front matter the Hugging Face Hub reads)."""
    row = sweep_row(out)
    lines = ["---", f"library_name: {library}", f"pipeline_tag: {pipeline_tag}", "tags:", "- unfreeze", "---", "",
             f"# {task}: {base_model}", "",
             "| | |", "|---|---|", f"| base model | `{base_model}` ({weights} weights) |", f"| data | `{data}` |",
             f"| trained | {summary[0] if summary else '?'} |", f"| command | `{command}` |"]
    if row is not None:
        shown = {k: v for k, v in row.items() if k in ("row", "seed", "sweep_file", "published", "options")}
        lines.append(f"| sweep row | `{shown}` |")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|", *_metric_rows(metrics), "",
              "## What trained", "", "```", *summary, "```", "", "## Loading", "", "```python", loading.strip(), "```"]
    if notes:
        lines += ["", "## Where plain transformers differs from the run", "", *[f"* {note}" for note in notes]]
    return "\n".join(lines) + "\n"
