"""Sweep files: which command, shared settings, rows (and/or a grid), published numbers.

A sweep file is YAML (format in docs/sweep.md):

    command: classify            # a task of the registry (`unfreeze.registry.TASKS`) that has columns
    settings: {num_epochs: 5}    # options shared by every row
    seeds: [123]                 # default seeds (--seeds overrides)
    resources: {num_gpus: 1}     # what one run asks of a Ray cluster (--backend ray only)
    grid: {lr: [1e-4, 5e-4]}     # optional: Cartesian product of option lists
    rows:
      - name: last_layer         # unique; also the folder name under <out>/runs/
        options: {trainable_layers: last_layer}
        published: {test_acc: 0.72}
        init_from: other_row     # start from that row's output (same seed)

Everything is checked before anything runs: the command exists, every row's options are valid keys
of the command's config dataclass (`config_from_mapping`), names are unique, `init_from` targets
exist and form no cycle, `--rows` matches something. Problems are `UsageError`s (one line, exit 2).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unfreeze import config as config_system
from unfreeze.registry import Task, sweepable
from unfreeze.config import config_from_mapping, load_yaml
from unfreeze.errors import UsageError


# --- resolved rows ------------------------------------------------------------------------------

ROW_KEYS = {"name", "config", "options", "published", "init_from", "resources", "label", "note"}
TOP_KEYS = {"command", "description", "source", "config", "settings", "seeds", "resources", "grid", "rows"}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory", "resources"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")


@dataclass
class Row:
    index: int  # 1-based position in the file (after grid expansion): what `--rows 1-3` counts
    name: str
    options: dict[str, Any]  # explicit options (settings < row < --set), validated and typed
    config: dict[str, Any]  # every option of the command's config, defaults included
    init_from: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Sweep:
    command: Task
    rows: list[Row]
    seeds: list[int]
    overrides: dict[str, Any]
    path: str
    description: str | None = None
    source: str | None = None

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


# --- parsing ------------------------------------------------------------------------------------


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` items -> {key: value}; `--set ROWS:key=value` -> {"ROWS:key": value}.

    ROWS is a row name or a glob (`sft_*`): that override applies to the matching rows only.
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        rows, colon, name = key.strip().rpartition(":")
        if not sep or not name or (colon and not rows):
            raise UsageError(f"--set {item!r}: expected key=value or ROWS:key=value, e.g. --set num_epochs=1")
        overrides[f"{rows}:{name}" if colon else name] = value  # typed per option by load_sweep
    return overrides


def overrides_for(overrides: dict[str, Any], row_name: str) -> dict[str, Any]:
    """The --set values that apply to one row (row-scoped ones after the global ones)."""
    applied = {k: v for k, v in overrides.items() if ":" not in k}
    for key, value in overrides.items():
        rows, _, name = key.rpartition(":")
        if rows and fnmatch.fnmatchcase(row_name, rows):
            applied[name] = value
    return applied


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 123,124,125") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected distinct integers, e.g. --seeds 123,124,125")
    return seeds


def parse_resources(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = load_yaml(value)
        except yaml.YAMLError:
            pass  # named as not a mapping just below
    if not isinstance(value, dict):
        raise UsageError(f"resources in {where} must be a mapping such as {{num_gpus: 1}}")
    unknown = sorted(set(value) - RESOURCE_KEYS)
    if unknown:
        raise UsageError(
            f"unknown resource(s) {', '.join(unknown)} in {where}; valid: {', '.join(sorted(RESOURCE_KEYS))}"
        )
    return dict(value)


def load_sweep(
    path: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    resources: dict[str, Any] | None = None,
) -> Sweep:
    """Read and fully validate a sweep file; `overrides` (--set) apply to every row."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"sweep file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise UsageError(f"sweep file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"sweep file {path} must be a YAML mapping with 'command' and 'rows'")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(unknown)} in {path}; valid: {', '.join(sorted(TOP_KEYS))}")
    name = data.get("command")
    tasks = sweepable()
    if name not in tasks:
        raise UsageError(f"{path}: unknown command {name!r}; a sweep runs one of: {', '.join(tasks)}")
    command = tasks[name]
    overrides = dict(overrides or {})
    for key in overrides:
        reserved = key.rpartition(":")[2]
        if reserved in (command.out_option, command.seed_option):
            raise UsageError(f"--set {reserved}=... is not allowed: the sweep sets {reserved} for every run "
                             f"({'use --seeds' if reserved == command.seed_option else 'use --out'})")

    settings = {**_options_file(data.get("config"), path, f"'config' of {path}"),
                **_mapping(data.get("settings"), f"'settings' of {path}")}
    default_resources = parse_resources(data.get("resources"), f"{path}")
    raw_rows = _expand(data, path)
    if not raw_rows:
        raise UsageError(f"{path} has no rows (give 'rows', 'grid', or both)")

    rows: list[Row] = []
    for index, raw in enumerate(raw_rows, start=1):
        if any(row.name == raw["name"] for row in rows):
            raise UsageError(f"{path}: duplicate row name {raw['name']!r}; row names must be unique")
        rows.append(_row(command, index, raw, settings, overrides, resources, default_resources, path))
    _check_dependencies(rows, path)
    for key in overrides:
        scope = key.rpartition(":")[0]
        if scope and not any(fnmatch.fnmatchcase(r.name, scope) for r in rows):
            raise UsageError(f"--set {key}=...: {scope!r} matches no row of {path}")

    if seeds is None:
        file_seeds = data.get("seeds")
        if file_seeds is None:
            default_seed = getattr(command.config(), command.seed_option)
            seeds = [default_seed]
        else:
            file_seeds = file_seeds if isinstance(file_seeds, list) else [file_seeds]
            seeds = parse_seeds(",".join(str(s) for s in file_seeds))
    return Sweep(command=command, rows=rows, seeds=list(seeds), overrides=overrides, path=str(path.resolve()),
                 description=data.get("description"), source=data.get("source"))


def _row(command: Task, index: int, raw: dict[str, Any], settings: dict[str, Any], overrides: dict[str, Any],
         resources: dict[str, Any] | None, default_resources: dict[str, Any], path: Path) -> Row:
    """One row of a sweep file, resolved: its options (settings < row < --set, typed and checked by the command's
    own parser), paths made absolute, published values checked against the command's metrics."""
    config_class = command.config
    row_name = raw["name"]
    where = f"row {row_name!r} of {path}"
    options = {**_options_file(raw.get("config"), path, f"'config' of {where}"),
               **_mapping(raw.get("options"), f"'options' of {where}")}
    for reserved in (command.out_option, command.seed_option):
        if reserved in options or reserved in settings:
            hint = "set seeds with 'seeds:' or --seeds" if reserved == command.seed_option else "use --out"
            raise UsageError(f"{where}: option {reserved!r} is set by the sweep itself ({hint})")
    if raw.get("init_from") is not None:
        if command.init_option is None:
            raise UsageError(f"{where}: init_from is not supported for command {command.name!r}")
        # (a row's options file may name a starting model: init_from replaces it)
        clash = sorted({command.init_option, *command.init_replaces} & set(raw.get("options") or {}))
        if clash:
            raise UsageError(f"{where}: option(s) {', '.join(clash)} conflict with init_from "
                             f"(the run starts from the output of row {raw['init_from']!r})")
    # --set values are read by the same parser as the command's own flags
    row_overrides = config_system.parse_overrides(
        config_class, [f"{k}={v}" for k, v in overrides_for(overrides, row_name).items()],
        where=f"{where} (with --set)")
    merged = {**settings, **options, **row_overrides}
    if raw.get("init_from") is not None:  # the dependency's output replaces the starting model
        for key in (command.init_option, *command.init_replaces):
            merged.pop(key, None)
    merged = _absolute_paths(merged, command.path_options)
    suffix = " (with --set)" if row_overrides else ""
    try:
        config = config_from_mapping(config_class, merged, where + suffix)
    except UsageError as err:
        raise UsageError(str(err) if where in str(err) else f"{where}{suffix}: {err}") from None
    published = _mapping(raw.get("published"), f"'published' of {where}")
    bad = sorted(set(published) - set(command.metric_keys))
    if bad:
        raise UsageError(f"{where}: published value(s) for unknown metric(s) {', '.join(bad)}; "
                         f"known: {', '.join(command.metric_keys)}")
    full = dataclasses.asdict(config)
    return Row(
        index=index,
        name=row_name,
        options={k: full[k] for k in merged},
        config={k: v for k, v in full.items() if k not in (command.out_option, command.seed_option)},
        init_from=raw.get("init_from"),
        resources=dict(resources) if resources is not None else
        {**default_resources, **parse_resources(raw.get("resources"), where)},
        published=published,
        label=raw.get("label"),
        note=raw.get("note"),
    )


def _options_file(value: Any, sweep_path: Path, where: str) -> dict[str, Any]:
    """`config: other.yaml` -> its options (a path relative to the sweep file)."""
    if value is None:
        return {}
    file = Path(value) if os.path.isabs(str(value)) else sweep_path.parent / str(value)
    try:
        options = load_yaml(file.read_text(encoding="utf-8")) or {}
    except OSError:
        raise UsageError(f"{where}: cannot read {file}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{where}: {file} is not valid YAML: {str(err).splitlines()[0]}") from None
    return _mapping(options, f"{file} ({where})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping (key: value)")
    return dict(value)


def _expand(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The file's rows, each crossed with every grid point (or the grid alone when there are no rows)."""
    rows = data.get("rows") or []
    if not isinstance(rows, list):
        raise UsageError(f"'rows' of {path} must be a list of mappings, each with a 'name'")
    checked = []
    for position, raw in enumerate(rows, start=1):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise UsageError(f"row {position} of {path} must be a mapping with a 'name'")
        unknown = sorted(set(raw) - ROW_KEYS)
        if unknown:
            raise UsageError(f"unknown key(s) {', '.join(unknown)} in row {raw['name']!r} of {path}; "
                             f"valid: {', '.join(sorted(ROW_KEYS))} (options go under 'options:')")
        raw = dict(raw, name=str(raw["name"]))
        if not NAME_RE.match(raw["name"]):
            raise UsageError(f"row name {raw['name']!r} in {path}: use letters, digits and _ . , = + - only")
        checked.append(raw)
    grid = _mapping(data.get("grid"), f"'grid' of {path}")
    if not grid:
        return checked
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"grid key {key!r} in {path} must map to a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    bases = checked or [{"name": None}]
    expanded = []
    for base in bases:
        for point in points:
            label = ",".join(f"{k}={_name_part(v)}" for k, v in point.items())
            name = f"{base['name']},{label}" if base["name"] else label
            options = {**_mapping(base.get("options"), f"row {base['name']!r}"), **point}
            expanded.append({**base, "name": name, "options": options})
    return expanded


def _name_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(value))


def _absolute_paths(options: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Relative paths that exist here become absolute, so runs do not depend on the working directory."""
    out = dict(options)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
            out[key] = os.path.abspath(value)
    return out


def _check_dependencies(rows: list[Row], path: Path) -> None:
    names = {r.name for r in rows}
    for row in rows:
        if row.init_from is not None and row.init_from not in names:
            raise UsageError(f"row {row.name!r} of {path}: init_from {row.init_from!r} is not a row of this file")
    for row in rows:  # cycles: follow the chain
        chain = [row.name]
        current = row
        while current.init_from is not None:
            if current.init_from in chain:
                raise UsageError(f"{path}: init_from cycle {' -> '.join(chain + [current.init_from])}")
            chain.append(current.init_from)
            current = next(r for r in rows if r.name == current.init_from)


# --- selecting rows -----------------------------------------------------------------------------


def select_rows(rows: list[Row], spec: str | None) -> list[Row]:
    """`--rows` -> rows, in file order. Items: `3`, `1-3`, a row name, or a glob such as `sft_fr_*`.

    Rows that a selected row starts from (`init_from`) are added: they have to run first.
    """
    if spec is None or spec.strip() == "":
        chosen = {r.name for r in rows}
    else:
        chosen = set()
        by_name = {r.name: r for r in rows}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item in by_name:
                chosen.add(item)
                continue
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if match:
                first = int(match.group(1))
                last = int(match.group(2) or first)
                hits = [r.name for r in rows if first <= r.index <= last]
            else:
                hits = [r.name for r in rows if fnmatch.fnmatchcase(r.name, item)]
            if not hits:
                raise UsageError(
                    f"--rows {spec!r}: {item!r} matches no row; rows are 1-{len(rows)} or names: "
                    + ", ".join(r.name for r in rows[:30]) + (" ..." if len(rows) > 30 else "")
                )
            chosen.update(hits)
    by_name = {r.name: r for r in rows}
    for name in list(chosen):
        current = by_name[name]
        while current.init_from is not None:
            chosen.add(current.init_from)
            current = by_name[current.init_from]
    return [r for r in rows if r.name in chosen]


def dependency_order(rows: list[Row]) -> list[Row]:
    """Rows with every `init_from` target before its dependants, otherwise in file order."""
    done: set[str] = set()
    ordered: list[Row] = []
    remaining = list(rows)
    while remaining:
        for row in remaining:
            if row.init_from is None or row.init_from in done or row.init_from not in {r.name for r in rows}:
                ordered.append(row)
                done.add(row.name)
                remaining.remove(row)
                break
    return ordered
