"""What `unfreeze suggest` hands back: the ranked table, suggestion.json, a PNG, and a sweep file."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml

from unfreeze.config import fields_where, to_dict
from unfreeze.files import atomic_write_text
from unfreeze.recipes.classify.config import ClassifyConfig


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy measured on n examples."""
    if n <= 0 or math.isnan(accuracy):
        return (0.0, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def rank_key(row: dict) -> tuple:
    """Further rounds first, then validation accuracy, validation loss, predicted time."""
    return (-row["evidence"]["rounds"], -row["predicted_val_acc"], row["evidence"]["val_loss"],
            row["predicted_time_s"])


def size_text(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def render_table(rows: list[dict], run_error: float | None = None) -> str:
    """The terminal table, one line per candidate, best first. `run_error`: the cost model's measured error,
    said in the header of the predicted times."""
    time_header = "time/run" + (f" (±{run_error:.0%})" if run_error is not None else "")
    header = ("rank", "candidate", "val acc (95% CI)", "steps", "trainable", time_header, "peak mem", "evidence")
    lines = [header]
    for row in rows:
        ev = row["evidence"]
        low, high = row["interval"]
        lines.append((str(row["rank"]), row["name"], f"{row['predicted_val_acc']:.3f} ({low:.2f}-{high:.2f})",
                      f"{ev['steps']}/{ev['total_steps']}", f"{row['trainable_params']:,}",
                      f"{row['predicted_time_s']:.1f}s", size_text(row["predicted_peak_bytes"]),
                      f"round {ev['rounds']}, probe {ev['probe']:.2f}, rgn {ev['rgn_share']:.2f}, cache {ev['cache']}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _spent_line(result: dict) -> str:
    """suggest's own time against the sweep it replaces, and what that sweep is."""
    sweep = result["sweep"]
    runs, seeds = len(sweep["runs"]), len(sweep["seeds"])
    builds = (f"{sweep['builds']} cache build(s) of {sweep['build_s']:.0f}s" if sweep["builds"]
              else "no cache build (the cache it reads is on disk)")
    unit = "of work" if result["budget_counts"] == "work" else "of wall time"
    return (f"suggest: {result['spent_s']:.0f}s wall ({result['spent_work_s']:.0f}s of work) = "
            f"{result['spent_share']:.2f} of the predicted sweep {result['sweep_predicted_s']:.0f}s "
            f"(work: {result['spent_work_share']:.2f}); the sweep: {runs // seeds} candidates x {seeds} seeds = {runs} "
            f"runs, {builds}; budget {result['budget']} = {result['budget_s']:.0f}s {unit}")


def summary_lines(result: dict) -> str:
    """What the table's numbers mean: the pick, what it cost against the sweep, how busy the machine was, and
    whether the rounds were cut short by the budget (then the ranking rests on fewer steps than a full run)."""
    meaning = (f"time/run: one run of that sweep reading a ready cache (data, model, cache key, training steps, "
               f"evaluation passes; saving final/ not counted); measured against real runs on three model sizes the "
               f"cost model was within ±{result['cost_model_error']:.0%} (docs/suggest.md)")
    lines = [f"\npick: {result['pick']}", _spent_line(result), meaning]
    rounds = result["halving"]["rounds"]
    if result["halving"]["stopped_early"] and rounds:
        last = rounds[-1]
        steps = max(last["steps"].values())
        total = max(row["evidence"]["total_steps"] for row in result["candidates"])
        lines.append(f"stopped early: the budget ended the rounds with {len(last['kept'])} candidate(s) still in "
                     f"after {len(rounds)} round(s); the ranking rests on at most {steps} of {total} steps per "
                     f"candidate, so confirm the top ones with full runs (--write_sweep) or raise --budget")
    confirm = result["confirm_sweep"]
    lines.append(f"confirming the top {confirm['top']} with `unfreeze sweep` (--write_sweep): predicted "
                 f"{confirm['predicted_s']:.0f}s, {confirm['builds']} cache build(s) (it reads suggest's cache)")
    if result["machine"]["busy"]:
        from unfreeze.recipes.suggest.cost import busy_note

        lines.append(f"note: {busy_note(result['machine'])}")
    if result["spent_work_share"] > 1:
        lines.append(f"note: suggest spent {result['spent_work_share']:.1f}x the predicted sweep: with so few or such "
                     f"cheap candidates its fixed costs (the shared cache, the measurements, the signals) outweigh the "
                     f"sweep it replaces; run the candidates with `unfreeze sweep` instead")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Predicted validation accuracy (with its interval) against predicted time of a full run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        low, high = row["interval"]
        acc = row["predicted_val_acc"]
        ax.errorbar(row["predicted_time_s"], acc, yerr=[[acc - low], [high - acc]], fmt="o",
                    color="C3" if row["rank"] == 1 else "C0", capsize=3)
        ax.annotate(row["name"], (row["predicted_time_s"], acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("predicted time of a full run (s, log)")
    ax.set_ylabel("predicted validation accuracy")
    ax.set_title("unfreeze suggest: accuracy vs cost (red: the pick)")
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """The PNG written whole or not at all (a temporary file renamed into place); the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def row_name(candidate: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", candidate)


def sweep_text(rows: list[dict], classify_cfg: ClassifyConfig, seeds: list[int], top: int,
               cache_dir: str | None = None) -> str:
    """A sweep file of the `top` best candidates that classify can run, with the options suggest used, reading
    suggest's frozen-prefix cache in `cache_dir` (already built: the sweep does not build it again)."""
    defaults, used = to_dict(ClassifyConfig()), to_dict(classify_cfg)
    settings = {k: v for k, v in used.items() if v != defaults[k] and k not in ("seed", "out", "trainable_layers")}
    if cache_dir is not None:
        settings["feature_cache_dir"] = str(Path(cache_dir).resolve())
    for key in fields_where(ClassifyConfig, "path"):  # the file may be run from another folder
        if isinstance(settings.get(key), str) and os.path.exists(settings[key]):
            settings[key] = os.path.abspath(settings[key])
    # Every candidate is a classify preset (checked by classify's own parser when the file is run).
    body = {
        "command": "classify",
        "description": "the top candidates of unfreeze suggest, to confirm with full runs",
        "seeds": seeds,
        "settings": settings,
        "rows": [{"name": row_name(r["name"]), "label": f"suggest rank {r['rank']}",
                  "options": {"trainable_layers": r["name"]}} for r in rows[:top]],
    }
    note = "# written by unfreeze suggest; confirm with: unfreeze sweep FILE --out runs/confirm"
    return note + "\n" + yaml.safe_dump(body, sort_keys=False)


def write_sweep(path: str, text: str) -> Path:
    return atomic_write_text(path, text)


def write_exports(folder: Path, result: dict, setup, top: int) -> dict:
    """The pick and the next candidates up to `top`, each in every form that can hold it (`export.formats`), in
    `folder/<rank>-<name>/`; `folder/export.json` lists them. Returns that list."""
    from unfreeze.export import formats
    from unfreeze.files import atomic_write_json
    from unfreeze.recipes.classify.outputs import export_plan

    listed = []
    for row in result["candidates"][:top]:
        sub = folder / f"{row['rank']}-{re.sub(r'[^A-Za-z0-9_.-]', '_', row['name'])}"
        plan = export_plan(setup.candidate(row["name"]), setup.inputs.config, len(setup.inputs.splits.class_names))
        record = formats.write_all(plan, sub)
        listed.append({"rank": row["rank"], "name": row["name"], "dir": sub.name, "written": record["written"],
                       "not_written": record["not_written"]})
    atomic_write_json(folder / "export.json", {"pick": result["pick"], "candidates": listed})
    return listed
