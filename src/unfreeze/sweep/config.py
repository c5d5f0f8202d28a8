"""The options of `unfreeze sweep` (kept apart from the runner so the CLI can list them without loading it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unfreeze.tracking import ReportTo


@dataclass
class SweepConfig:
    """Run every row (and seed) of a sweep file, resumably: a rerun runs only what has no finished result."""

    file: str
    """sweep file (YAML), e.g. experiments/spam_additional.yaml (also the first bare word)"""
    rows: str | None = None
    """rows to run: numbers, ranges and names, e.g. 1-3 or 1,4,7 or last_layer (default: all)"""
    seeds: str | None = None
    """comma-separated seeds, e.g. 123,124,125 (default: the file's 'seeds', else the command's default seed)"""
    set: list[str] = field(default_factory=list)
    """override an option in every row (repeatable), e.g. --set num_epochs=1; ROWS:key=value overrides it in
    the matching rows only, e.g. 'step1_*:data=...'; values are read exactly as the command's own flags"""
    backend: Literal["local", "ray"] = "local"
    """local: one run after another in this process; ray: one Ray task per run"""
    address: str | None = None
    """Ray cluster address for --backend ray (default: start a local Ray instance)"""
    resources: str | None = None
    """replace every row's Ray resources, e.g. '{num_cpus: 1}' on a machine without GPUs"""
    out: str | None = None
    """output folder (default: runs/<sweep file name>)"""
    # --- added by suggest2 ---
    report_to: ReportTo = "trackio"
    """experiment tracker of every run: trackio (local: <out>/trackio, view with `trackio show`), wandb, mlflow,
    tensorboard or none; runs are named <sweep>/<row>/seed-<s> and grouped by the sweep (a row may set its own)"""
    feature_cache: bool = True
    """classify rows share frozen-prefix caches on disk in <out>/features (classify's --feature_cache_dir):
    rows and seeds that freeze the same prefix compute it once; false: each run caches in memory alone"""
