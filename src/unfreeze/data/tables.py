"""Reading labelled rows: CSV, TSV, JSON Lines (or a JSON array), Parquet, and `datasets` hub datasets.

Each reader returns a pandas DataFrame as the file has it; choosing the text and label columns and
checking their values is `unfreeze.data.labelled`'s job. Every failure is one UsageError line that
names `--data` and the file.

CSV and TSV are read with every column as text (`dtype=str`), so that a text like "007" stays "007"
and integer labels with a missing value do not turn into floats; `labelled` turns labels into the same
classes whatever the format (docs/classify-data.md). JSON is parsed with the `json` module for the same
reason (pandas' `read_json` guesses dates and numbers).

Two columns of one name are refused in every format: pandas would rename the second CSV column to
`name.1` and train on the first without a word, and JSON would keep the last value.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pandas as pd

from unfreeze.data.gsm8k import parse_json_rows
from unfreeze.errors import UsageError

# File suffix -> format. Anything else is the SMS Spam Collection's own format (see `labelled`).
TABLE_FORMATS = {".csv": "CSV", ".tsv": "TSV", ".tab": "TSV", ".jsonl": "JSONL", ".ndjson": "JSONL",
                 ".json": "JSON", ".parquet": "Parquet", ".pq": "Parquet"}
FORMATS_SAID = ".csv, .tsv, .jsonl, .json or .parquet"
# Split names a folder or hub dataset may use, in the order they are looked for.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
# `owner/name` or `name`, optionally `:config` (e.g. `glue:sst2`): what `datasets.load_dataset` takes.
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?")
QUOTE_CHARS = 80


def quote(text: object, limit: int = QUOTE_CHARS) -> str:
    """At most `limit` characters of a bad input, so one error line stays one readable line."""
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_FORMATS


def read_table(path: Path) -> pd.DataFrame:
    """One CSV/TSV/JSONL/JSON/Parquet file as a DataFrame (its own columns)."""
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"--data {path}: unsupported file type {path.suffix or '(no suffix)'}; use {FORMATS_SAID}")
    try:
        if kind in ("CSV", "TSV"):
            separator = "," if kind == "CSV" else "\t"
            refuse_repeated_names(_header(path, separator), path)
            frame = pd.read_csv(path, sep=separator, dtype=str)
        elif kind == "Parquet":
            import pyarrow.parquet

            refuse_repeated_names(pyarrow.parquet.read_schema(path).names, path)
            frame = pd.read_parquet(path)
        else:
            frame = _read_json(path)
    except pd.errors.EmptyDataError:
        raise UsageError(f"--data {path}: the file is empty; expected a header line and one row per example") from None
    except UsageError:
        raise
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError, ValueError, OSError, ImportError) as err:
        raise UsageError(f"--data {path}: unreadable {kind} file ({quote(err)})") from None
    if frame.empty:
        raise UsageError(f"--data {path}: the file has no rows")
    return frame


def refuse_repeated_names(columns, path: Path, what: str = "columns") -> None:
    """One line naming the first column name that occurs twice (unnamed CSV columns do not count)."""
    seen: set[str] = set()
    for name in map(str, columns):
        if name in seen and name.strip():
            raise UsageError(f"--data {path}: two {what} are named {name!r}; rename one of them (columns are "
                             "chosen by name, so the file is ambiguous)")
        seen.add(name)


def _header(path: Path, separator: str) -> list[str]:
    """The first row of a CSV/TSV file as the csv module reads it (pandas' parser reads the same quoting)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return next((row for row in csv.reader(handle, delimiter=separator) if row), [])  # pandas skips blank lines


def _read_json(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    rows = parse_json_rows(text, str(path), flag="--data")
    if not isinstance(rows, list):
        raise UsageError(f"--data {path}: expected JSON Lines or a JSON array of objects, found a single value")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UsageError(f"--data {path}: row {number} is not a JSON object")
    _refuse_repeated_keys(text, path)
    return pd.DataFrame.from_records(rows)


def _refuse_repeated_keys(text: str, path: Path) -> None:
    """A row with two fields of one name: `json` keeps the last silently, so the text is read again, this time
    with a hook that sees every key (the rows are known to parse)."""
    stripped = text.lstrip()
    pieces = [stripped] if stripped.startswith("[") else [line for line in text.splitlines() if line.strip()]

    def unique(pairs: list[tuple[str, object]]) -> dict:
        refuse_repeated_names([key for key, _ in pairs], path, "fields of a row")
        return dict(pairs)

    for piece in pieces:
        json.loads(piece, object_pairs_hook=unique)


def split_files(folder: Path) -> dict[str, Path]:
    """train/validation/test files of a folder (any table format; validation also val/valid/dev)."""
    found, absent = {}, []
    for split, aliases in SPLIT_ALIASES.items():
        matches = sorted(p for p in folder.iterdir() if p.is_file() and p.stem.lower() in aliases and is_table(p))
        if len(matches) > 1:
            raise UsageError(f"--data {folder}: {len(matches)} files for the {split} split "
                             f"({', '.join(p.name for p in matches)}); keep one")
        if matches:
            found[split] = matches[0]
        else:
            absent.append("/".join(aliases))
    if absent:
        raise UsageError(f"--data {folder}: the folder lacks a {' and a '.join(absent)} file "
                         f"(expected train, validation and test as {FORMATS_SAID})")
    return found


# --- the datasets hub -----------------------------------------------------------------------------
def looks_like_hub_name(data: str) -> bool:
    """A name `datasets.load_dataset` could take that is no local path (a missing file stays a missing file)."""
    path = Path(data).expanduser()
    return (not path.exists() and not data.startswith((".", "/", "~")) and not is_table(path)
            and HUB_NAME.fullmatch(data) is not None)


def hub_parts(data: str) -> tuple[str, str | None]:
    name, _, config = data.partition(":")
    return name, config or None


def hub_download(data: str):
    """The `offline.Download` loading hub dataset `data` needs (cached when the hub or datasets cache has it)."""
    from huggingface_hub import constants

    from unfreeze.offline import Download, hub_endpoint

    name, _ = hub_parts(data)
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    cached = (os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "datasets--" + name.replace("/", "--")))
              or os.path.isdir(os.path.join(datasets_cache, name.replace("/", "___"))))
    return Download(f"the dataset {name!r} from the Hugging Face hub (no local file or folder has that name)",
                    (hub_endpoint(),), cached, f"--data PATH (a local {FORMATS_SAID} file, or a folder of them)",
                    hub=True)


def read_hub(data: str) -> dict[str, pd.DataFrame]:
    """The labelled train/validation/test splits a hub dataset has (others, e.g. 'unsupervised', are left out).

    Integer labels of a `ClassLabel` column become their names, so results name the classes. A split
    whose labels are all -1 (unlabelled, as GLUE's test splits) is left out too; a single -1 becomes a
    missing label, which `labelled` reports.
    """
    import datasets

    name, config = hub_parts(data)
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # noqa: BLE001 - network, unknown name, bad config: all the user's to fix
        raise UsageError(f"--data {data}: could not load it from the Hugging Face hub ({quote(err, 160)}); "
                         f"pass --data with a local {FORMATS_SAID} file or folder") from None
    frames = {}
    for split, aliases in SPLIT_ALIASES.items():
        present = [alias for alias in aliases if alias in loaded]
        frame = _hub_frame(loaded[present[0]]) if present else None
        if frame is not None:
            frames[split] = frame
    if "train" not in frames:
        raise UsageError(f"--data {data}: the dataset has no train split (it has {', '.join(loaded)}); "
                         "pass a local file instead")
    return frames


def _hub_frame(split) -> pd.DataFrame | None:
    """The split as a DataFrame with class names for ClassLabel ids; None when it is unlabelled."""
    frame = split.to_pandas()
    for column, feature in split.features.items():
        names = getattr(feature, "names", None)  # a datasets.ClassLabel
        if names:
            frame[column] = [names[v] if 0 <= v < len(names) else None for v in frame[column]]
            if len(frame) and frame[column].isna().all():
                return None
    return frame
