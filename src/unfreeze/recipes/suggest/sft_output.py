"""What `unfreeze suggest --task sft` hands back: the ranked table, suggestion.json, a PNG and an sft sweep file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from unfreeze.config import fields_where, to_dict
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest.output import row_name, save_figure, size_text, write_sweep  # noqa: F401 - one way for both tasks

# sft keys a sweep row or the sweep itself sets, never its settings: what trains, where it writes, the seed.
_PER_ROW = {"out", "seed", "overwrite", "resume", "trainable_layers", *cand.SFT_SWITCH_WORDS.values()}


def rank_key(row: dict) -> tuple:
    """Further rounds first, then validation loss, then predicted time."""
    return (-row["rounds"], row["val_loss"], row["predicted_time_s"])


def ranked_rows(arms: list, predicted: dict, result) -> list[dict]:
    """One row per candidate, best first: its validation loss at its last round, the run the cost model predicts."""
    rows = []
    for arm in arms:
        steps, _, loss = arm.history[-1]
        p = predicted[arm.name]
        rows.append({"name": arm.name, "val_loss": round(loss, 5), "steps": steps, "total_steps": arm.total_steps,
                     "rounds": sum(arm.name in rung.scores for rung in result.rungs),
                     "full_run": steps >= arm.total_steps, "val_history": [list(h[::2]) for h in arm.history],
                     "predicted_time_s": p["run_s"], "predicted_time_parts": p["parts"], "step_s": p["step_s"],
                     **arm.facts})
    rows.sort(key=rank_key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def render_table(rows: list[dict]) -> str:
    """The terminal table, one line per candidate, best first."""
    accuracy = any("test_accuracy" in row for row in rows)
    header = ("rank", "candidate", "val loss", *(("test acc",) if accuracy else ()), "steps", "rounds", "trainable",
              "time/run", "peak mem (est.)", "cache")
    lines = [header]
    for row in rows:
        acc = (f"{row['test_accuracy']:.3f}" if "test_accuracy" in row else "-",) if accuracy else ()
        lines.append((str(row["rank"]), row["name"], f"{row['val_loss']:.4f}", *acc,
                      f"{row['steps']}/{row['total_steps']}", str(row["rounds"]), f"{row['trainable_params']:,}",
                      f"{row['predicted_time_s']:.1f}s", size_text(row["predicted_peak_bytes"]), row["cache"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def outcome(cfg, rows: list[dict], result, sweep: dict, planned: dict, budget_s: float, budget_kind: str,
            clock) -> dict:
    """suggestion.json's content: the ranking, what suggest spent against the sweep it replaces, the rounds."""
    wall, work = clock.wall(), clock()
    return {
        "task": "sft", "pick": rows[0]["name"], "score": cfg.score, "candidates": rows, "budget": cfg.budget,
        "budget_s": round(budget_s, 2), "budget_counts": "work" if budget_kind == "share" else "wall",
        "spent_s": round(wall, 2), "spent_work_s": round(work, 2), "spent_cpu_s": round(clock.cpu(), 2),
        "sweep_predicted_s": sweep["total_s"], "spent_share": round(wall / sweep["total_s"], 4),
        "spent_work_share": round(work / sweep["total_s"], 4),
        "sweep": {"seeds": sweep["seeds"], "runs": sweep["runs"], "budget_basis_s": planned["total_s"]},
        "halving": {"eta": cfg.eta, "first_round_steps": result.first_rung_steps,
                    "planned_s": round(result.planned_s, 2), "stopped_early": result.stopped_early,
                    "rounds": [vars(r) for r in result.rungs]},
        "config": to_dict(cfg),
    }


def summary_lines(result: dict) -> str:
    """The pick, what suggest spent against the sweep it replaces, and whether the budget cut the rounds short."""
    sweep = result["sweep"]
    lines = [f"\npick: {result['pick']}" + (" (by test accuracy among the finalists)" if result["score"] == "accuracy"
                                            else " (by validation loss on the completion)"),
             f"suggest: {result['spent_s']:.0f}s wall ({result['spent_work_s']:.0f}s of work) = "
             f"{result['spent_share']:.2f} of the predicted sweep {result['sweep_predicted_s']:.0f}s "
             f"({sweep['runs']} sft runs: the candidates x {sweep['seeds']} seeds); budget {result['budget']} = "
             f"{result['budget_s']:.0f}s",
             "time/run: one sft run of that sweep (setup with its cache, the steps, the validations; the test "
             "generation not counted)"]
    if result["halving"]["stopped_early"]:
        lines.append("stopped early: the budget ended the rounds before one candidate was left; the ranking rests on "
                     "fewer steps than a full run, so confirm the top ones (--write_sweep) or raise --budget")
    return "\n".join(lines)


def sweep_text(rows: list[dict], cfg, top: int) -> str:
    """An sft sweep file of the `top` best candidates, with every sft key the command set (`cfg`)."""
    defaults = to_dict(SFTConfig())
    used = to_dict(SFTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SFTConfig)}))
    settings = {k: v for k, v in used.items() if v != defaults[k] and k not in _PER_ROW}
    for key in fields_where(SFTConfig, "path"):  # the file may be run from another folder
        if isinstance(settings.get(key), str) and os.path.exists(settings[key]):
            settings[key] = os.path.abspath(settings[key])
    body = {"command": "sft", "description": "the top candidates of unfreeze suggest --task sft, to confirm with "
            "full runs", "seeds": [cfg.seed + i for i in range(cfg.seeds)], "settings": settings,
            "rows": [{"name": row_name(r["name"]), "label": f"suggest rank {r['rank']}",
                      "options": row_options(r["name"])} for r in rows[:top]]}
    note = "# written by unfreeze suggest --task sft; confirm with: unfreeze sweep FILE --out runs/confirm"
    return note + "\n" + yaml.safe_dump(body, sort_keys=False)


def row_options(name: str) -> dict:
    """A candidate as sft options: the switches it turns on and its words."""
    switches, words = cand.split_sft_candidate(name)
    options = {key: True for key, on in switches.items() if on}
    return {**options, **({"trainable_layers": words} if words else {})}


def plot(rows: list[dict], path: Path) -> Path:
    """Validation loss against the predicted time of a full run (red: the pick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        ax.plot(row["predicted_time_s"], row["val_loss"], "o", color="C3" if row["rank"] == 1 else "C0")
        ax.annotate(row["name"], (row["predicted_time_s"], row["val_loss"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("predicted time of a full run (s, log)")
    ax.set_ylabel("validation loss at its last round")
    ax.set_title("unfreeze suggest --task sft (red: the pick)")
    return save_figure(fig, path)
