"""The SMS Spam Collection, split exactly as the reference does.

Reference recipe (rasbt/LLMs-from-scratch, ch06/02_bonus_additional-experiments/additional_experiments.py,
checked against that code: tests/test_sms_spam.py pins the counts below): read the tab-separated file with
pandas' default quoting (a stray `"` merges two lines, giving 5572 rows), sample as many ham as there are spam
(747) with `random_state=123`, concatenate ham then spam, shuffle with `random_state=123`, map ham->0 spam->1,
shuffle *again* with `random_state=123` (the reference's `random_split` shuffles before cutting), and cut
70/10/20 in order.
Result: train 1045 (530 ham / 515 spam), validation 149 (76/73), test 300 (141/159).

Without --data the collection shipped inside the package is used (`files/sms_spam/`, CC BY 4.0, cited in
its README.md; byte-equal to the download), so a first run needs no network. `--data sms_spam:download`
downloads it from UCI (the reference's source, with the reference's mirror as fallback) instead.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from unfreeze.errors import UsageError

URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    # The reference's backup mirror, used when UCI is down.
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
PACKAGED = Path(__file__).resolve().parent / "files" / "sms_spam" / "SMSSpamCollection"
PACKAGED_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
DOWNLOAD = "sms_spam:download"  # the --data value that downloads the collection instead of using the shipped one
SPLIT_SEED = 123  # fixed by the reference; the split does not follow --seed so results stay comparable
SPLIT_NAMES = ("train", "validation", "test")
QUOTE_CHARS = 80  # how much of a bad file an error message quotes
# The 70/10/20 cut of 2n balanced messages leaves int(0.2 n) for validation: empty below 5 spam, one
# message below 10. Below this many per split, accuracies mean little; we warn.
MIN_SPLIT_ROWS = 2


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    source: str
    # Names of the class indices in Label (`unfreeze.data.labelled` sets them for other data).
    class_names: tuple[str, ...] = ("ham", "spam")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def cache_dir() -> Path:
    return Path(os.environ.get("UNFREEZE_CACHE", Path.home() / ".cache" / "unfreeze"))


def cached_path() -> Path:
    return cache_dir() / "sms_spam" / "SMSSpamCollection"


def packaged_path() -> Path:
    """The collection shipped inside the package (an install that lost it is told how to go on)."""
    if not PACKAGED.is_file():
        raise UsageError(f"the SMS Spam Collection shipped with unfreeze is missing ({PACKAGED}); reinstall unfreeze, "
                         f"or pass --data {DOWNLOAD} (download it) or --data PATH/SMSSpamCollection")
    return PACKAGED


def is_download(data: str | None) -> bool:
    return data is not None and str(data).strip() == DOWNLOAD


def needed_download(data: str | None) -> list:
    """The download `load_splits(data)` would make (none for the shipped copy, a local path or a cached copy)."""
    from unfreeze.offline import Download

    if data is None:
        return []  # the shipped copy
    if not is_download(data):
        # Other data goes through `unfreeze.data.labelled`; of it, only a hub dataset name downloads.
        from unfreeze.data import tables

        text = str(data)
        return [tables.hub_download(text)] if text.strip() and tables.looks_like_hub_name(text) else []
    return [Download("the SMS Spam Collection", URLS, cached_path().is_file(), "--data PATH/SMSSpamCollection")]


def download(target: Path | None = None, timeout: float = 30.0) -> Path:
    """Download the collection (UCI, then the reference's mirror) and keep `SMSSpamCollection`."""
    target = target or cached_path()
    if target.exists():
        return target
    errors = []
    for url in URLS:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                content = archive.read("SMSSpamCollection")
        except (urllib.error.URLError, TimeoutError, OSError, zipfile.BadZipFile, KeyError) as err:
            errors.append(f"{url}: {err}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        tmp.write_bytes(content)
        os.replace(tmp, target)
        return target
    raise UsageError(
        "could not download the SMS Spam Collection (" + "; ".join(errors)[:300] + "); "
        "offline? pass --data /path/to/SMSSpamCollection"
    )


def _quote(text: object, limit: int = QUOTE_CHARS) -> str:
    """At most `limit` characters of a bad input, so one error line stays one readable line."""
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def read_collection(path: Path) -> pd.DataFrame:
    """The raw tab-separated file as (Label, Text), validated."""
    try:
        frame = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    except pd.errors.EmptyDataError:
        raise UsageError(f"--data {path}: the file is empty; expected lines 'ham<TAB>text' or 'spam<TAB>text'") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as err:
        raise UsageError(f"--data {path}: not a tab-separated SMSSpamCollection file ({_quote(err)})") from None
    labels = set(frame["Label"].dropna().unique())
    if frame.empty or not labels or not labels <= {"ham", "spam"} or frame["Text"].isna().all():
        others = sorted(map(str, labels - {"ham", "spam"}))
        found = f"a line starting {_quote(others[0])}" if others else "no text after the tab"
        raise UsageError(f"--data {path}: expected lines 'ham<TAB>text' or 'spam<TAB>text', found {found}")
    return frame


def balanced_split(frame: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1,
                   source: str = "--data") -> tuple:
    """Balance ham to the spam count, shuffle, and cut in order, exactly like the reference."""
    spam = frame[frame["Label"] == "spam"]
    ham = frame[frame["Label"] == "ham"]
    if len(spam) == 0:
        raise UsageError(f"{source}: no spam messages (all {len(ham)} rows are ham); the split pairs every spam "
                         "message with a ham one, so the file needs both")
    if len(ham) < len(spam):
        raise UsageError(f"{source}: need at least as many ham as spam messages (ham {len(ham)}, spam {len(spam)})")
    if int(2 * len(spam) * validation_frac) == 0:
        raise UsageError(f"{source}: {len(spam)} spam messages are too few: the 70/10/20 split of {2 * len(spam)} "
                         f"balanced messages leaves the validation split empty; provide at least 5 spam (and as many ham)")
    balanced = pd.concat([ham.sample(len(spam), random_state=SPLIT_SEED), spam])
    balanced = balanced.sample(frac=1, random_state=SPLIT_SEED).reset_index(drop=True)
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    balanced = balanced.sample(frac=1, random_state=SPLIT_SEED).reset_index(drop=True)
    train_end = int(len(balanced) * train_frac)
    validation_end = train_end + int(len(balanced) * validation_frac)
    return balanced[:train_end], balanced[train_end:validation_end], balanced[validation_end:]


def _read_split_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UsageError(f"--data {path}: unreadable CSV ({_quote(err)})") from None
    missing = {"Label", "Text"} - set(frame.columns)
    if missing:
        raise UsageError(f"--data {path}: missing column(s) {', '.join(sorted(missing))}; expected Label,Text")
    if not set(frame["Label"].unique()) <= {0, 1}:
        raise UsageError(f"--data {path}: Label must be 0 (ham) or 1 (spam)")
    frame["Text"] = ["" if pd.isna(text) else str(text) for text in frame["Text"]]  # an all-empty column reads as float
    if len(frame) and not frame["Text"].str.strip().any():
        raise UsageError(f"--data {path}: every Text is empty; the model would see nothing but padding")
    return frame


def load_splits(data: str | None) -> Splits:
    """`data`: None (the shipped copy), DOWNLOAD (download and cache), the raw collection file, or a folder
    of split CSVs."""
    if data is None:
        path = packaged_path()
    elif is_download(data):
        path = download()
    elif not str(data).strip():
        raise UsageError("--data is empty: pass the SMSSpamCollection file or a folder with train/validation/test.csv")
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise UsageError(f"--data {data}: no such file or folder")
    if path.is_dir():
        files = [path / f"{name}.csv" for name in SPLIT_NAMES]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise UsageError(f"--data {path}: folder lacks {', '.join(absent)} (expected train/validation/test.csv)")
        train, validation, test = (_read_split_csv(f) for f in files)
    else:
        train, validation, test = balanced_split(read_collection(path), source=f"--data {path}")
    for name, frame in zip(SPLIT_NAMES, (train, validation, test)):
        if len(frame) == 0:
            raise UsageError(f"--data {path}: the {name} split is empty; provide more examples")
    reset = [f.reset_index(drop=True) for f in (train, validation, test)]
    return Splits(*reset, source=str(path))


def small_split_warnings(splits: Splits) -> list[str]:
    """Warnings for splits too small for their accuracy to mean anything (an empty one is an error)."""
    return [f"the {name} split has only {size} example(s) ({splits.source}); its accuracy says little"
            for name, size in splits.sizes().items() if size < MIN_SPLIT_ROWS]
