"""Any labelled text data for `unfreeze classify --data`: choose columns, map classes, balance, split.

`--data` is one of
* nothing: the SMS Spam Collection shipped in the package, with the reference's split (`unfreeze.data.sms_spam`);
* `sms_spam:download`: the same collection, downloaded from UCI (and cached);
* a file without a table suffix: the SMS Spam Collection format ('ham<TAB>text'), reference split;
* a .csv/.tsv/.jsonl/.json/.parquet file: split with `--split` (default 0.7,0.1,0.2) and `--seed`;
* a folder with train, validation (or val/valid/dev) and test files in any of those formats;
* a `datasets` hub name (`owner/name`, optionally `:config`): its train/validation/test splits when all
  three have labels, else the labelled ones joined and split like one file.

The SMS file with `--split` left out and `--balance` not false gives the reference's split byte for byte;
otherwise it is an ordinary two-class file (columns Label, Text) split with `--seed`. Downloads (the SMS
file, a hub dataset) are announced by `sms_spam.needed_download`.

Classes are the sorted distinct labels of all splits (integers numerically, strings alphabetically), so
the mapping does not depend on row order; `Splits.class_names` keeps them for the results. Balancing
undersamples every class to the smallest one, as the reference does for ham; a folder's or hub
dataset's splits are balanced one by one. A single file is balanced first, then shuffled and cut in
order (train = int(n * f_train), validation = int(n * f_validation), test = the rest), like the reference.
"""

from __future__ import annotations

import dataclasses

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unfreeze.data import sms_spam, tables
from unfreeze.data.sms_spam import SPLIT_NAMES, Splits
from unfreeze.errors import UsageError

TEXT_COLUMNS = ("Text", "text", "sentence", "content")  # looked for in this order without --text_column
LABEL_COLUMNS = ("Label", "label", "labels", "class")  # likewise without --label_column
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
SMS_SUFFIXES = ("", ".txt")  # the collection's own name has none; a reader error on other suffixes says more
INTEGER = re.compile(r"[+-]?\d+")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # how a CSV cell spells 1, 1.0, .5 or 1e3
BOOLEAN_TEXTS = ("true", "false")  # in any case: the classes "True" and "False", as a JSON or Parquet boolean


@dataclass(frozen=True)
class DataOptions:
    """The data flags of `unfreeze classify` (None: the default described in `--help`)."""

    text_column: str | None = None
    label_column: str | None = None
    split: str | None = None
    balance: bool | None = None
    seed: int = 123


def load_splits(data: str | None, options: DataOptions = DataOptions()) -> Splits:
    """Train/validation/test frames with columns Text (str) and Label (class index), and the class names."""
    fractions = parse_split(options.split) if options.split is not None else None
    if data is not None and not str(data).strip():
        raise UsageError("--data is empty: pass the SMSSpamCollection file, a .csv/.tsv/.jsonl/.parquet file, "
                         "a folder with train/validation/test files, or a datasets hub name")
    if sms_spam.is_download(data):
        return _sms_collection(sms_spam.download(), options, fractions)
    path = Path(data).expanduser() if data is not None else None
    if path is not None and not path.exists():
        if not tables.looks_like_hub_name(str(data)):
            raise UsageError(f"--data {data}: no such file or folder")
        parts = tables.read_hub(str(data))
        if set(parts) == set(SPLIT_NAMES):
            require_no_split(fractions, options.split, f"hub dataset {data}")
        return _from_parts(parts, f"hub dataset {data}", options, fractions)
    if path is None or (path.is_file() and not tables.is_table(path)):
        return _sms_or_unsupported(path, options, fractions)
    if path.is_dir():
        require_no_split(fractions, options.split, path)
        parts = {split: tables.read_table(file) for split, file in tables.split_files(path).items()}
        return _from_parts(parts, str(path), options, None)
    return _from_parts({"all": tables.read_table(path)}, str(path), options, fractions or DEFAULT_SPLIT)


def require_no_split(fractions, said: str | None, where: Path | str) -> None:
    """--split cuts one file; data that comes with its three splits keeps them."""
    if fractions is not None:
        raise UsageError(f"--split {said}: {where} already has train, validation and test splits; "
                         "leave --split out (it cuts a single file)")


def parse_limit(text: str | None, flag: str = "--limit") -> tuple[int, int, int] | None:
    """'200' -> (200, 200, 200); '160,50,150' -> train, validation, test counts; None -> no limit."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: give a count of examples per split, e.g. 200, or train,validation,test "
                         "counts, e.g. 160,50,150")
    return values  # type: ignore[return-value]


def limited(splits: Splits, limit: str | None) -> Splits:
    """The first examples of each split (after the seeded split): a quick run on a part of the data."""
    counts = parse_limit(limit)
    if counts is None:
        return splits
    train, validation, test = (frame.iloc[:count].reset_index(drop=True)
                               for frame, count in zip((splits.train, splits.validation, splits.test), counts))
    return dataclasses.replace(splits, train=train, validation=validation, test=test,
                               source=f"{splits.source}, first {','.join(map(str, counts))} (--limit)")


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' -> three fractions (train, validation, test) that sum to 1."""
    try:
        values = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise UsageError(f"--split {text!r}: give three fractions train,validation,test, e.g. 0.7,0.1,0.2")
    if abs(sum(values) - 1) > 1e-6:
        raise UsageError(f"--split {text}: the fractions sum to {sum(values):g}, not 1; e.g. 0.7,0.1,0.2")
    return values  # type: ignore[return-value]


def _sms_or_unsupported(path: Path | None, options: DataOptions, fractions) -> Splits:
    """A file without a table suffix is read as the SMS Spam Collection, as before other formats existed;
    one whose suffix says it is something else (.xlsx, ...) and that does not read so is unsupported."""
    if path is not None and path.suffix.lower() not in SMS_SUFFIXES:
        try:
            sms_spam.read_collection(path)
        except UsageError:
            raise UsageError(f"--data {path}: unsupported file type {path.suffix}; use {tables.FORMATS_SAID}, or "
                             "the SMSSpamCollection format ('ham<TAB>text' lines)") from None
    return _sms_collection(path, options, fractions)


def _sms_collection(path: Path | None, options: DataOptions, fractions) -> Splits:
    """The SMS Spam Collection: the reference's split unless --split or --balance false asks otherwise."""
    if options.text_column not in (None, "Text") or options.label_column not in (None, "Label"):
        wrong = ("--text_column", options.text_column) if options.text_column not in (None, "Text") \
            else ("--label_column", options.label_column)
        raise UsageError(f"{wrong[0]} {wrong[1]}: the SMSSpamCollection file has the columns Label, Text only")
    if fractions is None and options.balance in (None, True):
        return sms_spam.load_splits(None if path is None else str(path))
    path = path or sms_spam.packaged_path()
    frame = sms_spam.read_collection(path)
    balance = True if options.balance is None else options.balance
    as_file = DataOptions("Text", "Label", options.split, balance, options.seed)
    return _from_parts({"all": frame}, str(path), as_file, fractions or DEFAULT_SPLIT)


def _from_parts(parts: dict[str, pd.DataFrame], source: str, options: DataOptions, fractions) -> Splits:
    """Columns chosen and checked, classes mapped, then balanced and split ("all") or used as they are."""
    rows = {name: select_columns(frame, f"{source}" if name == "all" else f"{source} ({name})", options)
            for name, frame in parts.items()}
    if "all" not in rows and set(rows) != set(SPLIT_NAMES):  # a hub dataset without all three splits
        rows = {"all": pd.concat(list(rows.values()), ignore_index=True)}
        fractions = fractions or DEFAULT_SPLIT
    classes = class_list(rows, source, options)
    rng = np.random.default_rng(options.seed % 2**64)
    balance = bool(options.balance)
    if "all" in rows:
        frame = balanced(rows["all"], rng) if balance else rows["all"]
        rows = cut(frame, fractions, rng, source, options.split)
        how = f"split {','.join(f'{f:g}' for f in fractions)} with seed {options.seed}"
    else:
        rows = {name: balanced(frame, rng) if balance else frame for name, frame in rows.items()}
        how = "its own splits"
    index = {label: i for i, label in enumerate(classes)}
    for name, frame in rows.items():
        if frame.empty:  # a hub dataset's empty split (`cut` names --split for a cut one)
            raise UsageError(f"--data {source}: the {name} split is empty; provide more examples")
        frame["Label"] = [index[label] for label in frame["Label"]]
    said = how + (", balanced" if balance else "")
    return Splits(*(rows[name].reset_index(drop=True) for name in SPLIT_NAMES), source=f"{source} ({said})",
                  class_names=tuple(str(c) for c in classes))


def pick_column(frame: pd.DataFrame, chosen: str | None, fallbacks: tuple[str, ...], flag: str, source: str) -> str:
    """The column named by `flag`, else the first fallback present; otherwise one line naming the columns."""
    columns = [str(c) for c in frame.columns]
    listed = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
    if chosen is not None:
        if chosen not in columns:
            raise UsageError(f"{flag} {chosen}: no such column in {source}; its columns are {listed}")
        return chosen
    for name in fallbacks:
        if name in columns:
            return name
    raise UsageError(f"--data {source}: no column named {' or '.join(fallbacks)}; its columns are {listed}; "
                     f"pass {flag} NAME")


def select_columns(frame: pd.DataFrame, source: str, options: DataOptions) -> pd.DataFrame:
    """(Text, Label) with texts as non-empty strings and labels as int or str; errors name the first bad row."""
    frame = frame.rename(columns=str)
    tables.refuse_repeated_names(frame.columns, source)  # e.g. a hub dataset's columns 1 and "1"
    text_column = pick_column(frame, options.text_column, TEXT_COLUMNS, "--text_column", source)
    label_column = pick_column(frame, options.label_column, LABEL_COLUMNS, "--label_column", source)
    if text_column == label_column:
        raise UsageError(f"--text_column and --label_column both name {text_column!r} in {source}; "
                         "they must be two different columns")
    texts = ["" if _missing(v) else str(v) for v in frame[text_column]]
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise UsageError(f"--data {source}: {len(empty)} row(s) have an empty {text_column!r} (first: row "
                         f"{empty[0] + 1}); remove them or choose another --text_column")
    labels = [label_value(v, label_column, source, i) for i, v in enumerate(frame[label_column])]
    return pd.DataFrame({"Text": texts, "Label": labels})


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def label_value(value, column: str, source: str, row: int) -> int | str:
    """A label as the same class in every format (docs/classify-data.md, "Labels"): a whole number is an int
    (1, 1.0, "1", "1.0" alike), a boolean the text "False"/"True" (true, "TRUE", "false" alike), anything else
    the stripped text. A number with a fraction is refused: it is a measurement, not a class."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, str) and value.strip():
        stripped = value.strip()
        if stripped.lower() in BOOLEAN_TEXTS:
            return stripped.capitalize()
        if not NUMBER.fullmatch(stripped):
            return stripped
        value = int(stripped) if INTEGER.fullmatch(stripped) else float(stripped)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not _missing(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, numbers.Real) and not _missing(value) and math.isfinite(value):
        raise UsageError(f"--data {source}: row {row + 1}'s label ({column!r}) is {value:g}, a number with a fraction; "
                         "labels are classes: strings or whole numbers (bin the values first for a numeric target)")
    what = "is empty" if _missing(value) or isinstance(value, str) else f"is {tables.quote(value)}"
    raise UsageError(f"--data {source}: row {row + 1}'s label ({column!r}) {what}; labels must be strings or "
                     "integers, one per row")


def class_list(rows: dict[str, pd.DataFrame], source: str, options: DataOptions) -> list:
    """The sorted distinct labels of every split; integers and strings may not mix; at least two."""
    found = {label for frame in rows.values() for label in frame["Label"]}
    kinds = {type(label) for label in found}
    if len(kinds) > 1:
        number = next(label for label in found if isinstance(label, int))
        word = next(label for label in found if isinstance(label, str))
        raise UsageError(f"--data {source}: the labels mix integers and text (e.g. {number} and {word!r}); "
                         "use one kind in every split")
    classes = sorted(found)
    if len(classes) < 2:
        column = options.label_column or "the label column"
        raise UsageError(f"--data {source}: {column} has one class ({tables.quote(classes[0])}); classification "
                         "needs at least two (wrong --label_column?)")
    return classes


def balanced(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Every class undersampled (without replacement) to the size of the smallest; row order kept."""
    groups = frame.groupby("Label", sort=True).indices
    smallest = min(len(rows) for rows in groups.values())
    keep = np.sort(np.concatenate([rng.choice(rows, size=smallest, replace=False) for rows in groups.values()]))
    return frame.iloc[keep].reset_index(drop=True)


def cut(frame: pd.DataFrame, fractions, rng: np.random.Generator, source: str, said: str | None) -> dict:
    """Shuffle with `rng`, then cut train/validation/test in order, sizes rounded down like the reference."""
    shuffled = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    train_end = int(len(shuffled) * fractions[0])
    validation_end = train_end + int(len(shuffled) * fractions[1])
    rows = {"train": shuffled[:train_end].copy(), "validation": shuffled[train_end:validation_end].copy(),
            "test": shuffled[validation_end:].copy()}
    for name, part in rows.items():
        if part.empty:
            flag = f"--split {said}" if said else "--split (default 0.7,0.1,0.2)"
            raise UsageError(f"{flag} leaves the {name} split of {source} empty (of {len(shuffled)} "
                             "rows to split); give it a larger fraction or provide more rows")
    return rows


def warnings(splits: Splits) -> list[str]:
    """Splits too small to mean much, and classes the training split never shows."""
    said = sms_spam.small_split_warnings(splits)
    seen = set(splits.train["Label"])
    unseen = [name for i, name in enumerate(splits.class_names) if i not in seen]
    if unseen:
        said.append(f"the train split has no example of class(es) {', '.join(unseen)}; the model cannot learn them")
    return said
