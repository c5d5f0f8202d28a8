"""GSM8K (Cobbe et al. 2021): loading the train/test splits and reading the final answer.

Sources, in the order they are tried when no local path is given:

1. the Hugging Face dataset `openai/gsm8k`, config `main`;
2. the JSONL files of the GitHub repository `openai/grade-school-math` (the original release).

A local path overrides both: a folder holding `train.jsonl`/`test.jsonl` (or `.json`), or one file.
Both JSON Lines and a JSON array of objects are read, whatever the extension says, because the
reference pipeline writes `.json` files in either form. Offline machines get one error line that
names the flag taking the local path.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

from unfreeze.errors import UsageError

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
GITHUB_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
SPLITS = ("train", "test")
# Tried in this order inside a folder: the original release is JSONL; the reference pipeline writes .json.
EXTENSIONS = (".jsonl", ".json")

# The prompt the PauseToken reference trained and tested with; `{prompt}` is the question. The default of
# `prompt_template` in `unfreeze sft` and `unfreeze eval-gsm8k` (here, where importing it costs nothing).
PROMPT_TEMPLATE = "### INPUT: {prompt}\n\n ### Answer:"

# The official answer format: the solution ends with a line "#### <number>" (commas allowed).
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(text: str | None) -> str | None:
    """The final number of a GSM8K solution (`#### 1,000` -> `'1000'`), or None if there is none."""
    if not isinstance(text, str):
        return None
    match = ANSWER_RE.search(text)
    if match is None:
        return None
    return match.group(1).strip().replace(",", "")


def split_file(location: str | Path, split: str, flag: str = "--dataset_location") -> Path:
    """The file of `split` under `location` (a folder), or `location` itself when it is a file."""
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise UsageError(f"{flag} {location}: no such file or folder")
    for extension in EXTENSIONS:
        candidate = path / f"{split}{extension}"
        if candidate.is_file():
            return candidate
    names = " or ".join(f"{split}{extension}" for extension in EXTENSIONS)
    raise UsageError(f"{flag} {location}: the folder has no {names}")


def parse_json_rows(text: str, source: str, flag: str = "--dataset_location") -> list:
    """Rows of a JSON array or of JSON Lines (blank lines skipped); bad JSON names the line."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UsageError(f"{flag} {source}: not valid JSON ({err.msg}, line {err.lineno})") from None
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UsageError(f"{flag} {source}: line {number} is not valid JSON ({err.msg})") from None
    return rows


def check_rows(rows: list, source: str, flag: str = "--dataset_location",
               fields: tuple[str, ...] = ("question", "answer")) -> list[dict]:
    """Every row must be an object whose `fields` are strings; the error names the first bad row."""
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UsageError(f"{flag} {source}: row {number} is not a JSON object")
        for field in fields:
            if not isinstance(row.get(field), str):
                problem = "has no" if field not in row else "has a non-text"
                # The fields the row does have: often the answer is just in another column.
                raise UsageError(f"{flag} {source}: row {number} {problem} {field!r} field (it lacks string fields "
                                 f"among {', '.join(map(repr, fields))}; it has: {', '.join(map(str, row)) or 'none'})")
    return rows


def read_rows(path: str | Path, flag: str = "--dataset_location",
              fields: tuple[str, ...] = ("question", "answer")) -> list[dict]:
    """The checked rows (JSON Lines or one JSON array) of one local file; `fields` must be strings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{flag} {path}: cannot read the file ({err})") from None
    return check_rows(parse_json_rows(text, str(path), flag), str(path), flag, fields)


def _from_hub(split: str) -> list[dict]:
    from datasets import load_dataset

    return load_dataset(HUB_ID, HUB_CONFIG, split=split).to_list()


def _from_github(split: str) -> list[dict]:
    # The Hugging Face offline switches mean "no network at all": honour them here too.
    switches = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in switches):
        raise ConnectionError("offline mode is enabled (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")
    with urllib.request.urlopen(GITHUB_URL.format(split=split), timeout=60) as response:
        text = response.read().decode("utf-8")
    return parse_json_rows(text, GITHUB_URL.format(split=split))


def download_split(split: str, flag: str = "--dataset_location") -> list[dict]:
    """The split from the hub, else from GitHub; both failing is one error line naming `flag`."""
    failures = []
    for name, fetch in ((f"the Hugging Face hub ({HUB_ID})", _from_hub),
                        ("GitHub (openai/grade-school-math)", _from_github)):
        try:
            rows = fetch(split)
        except Exception as err:  # network, auth, proxy: all end in the same advice
            failures.append(f"{name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}")
            continue
        return check_rows(rows, name, flag)
    raise UsageError(
        f"could not download GSM8K {split} ({'; '.join(failures)}); if this machine is offline, pass a "
        f"local folder holding {split}.jsonl with {flag}"
    )


def load_gsm8k_split(location: str | None, split: str, *, flag: str = "--dataset_location") -> list[dict]:
    """Rows of one GSM8K split, each with at least the text fields "question" and "answer".

    `location` is a local folder or file; None (or the hub id) downloads the public data.
    `flag` is the command-line flag that sets `location`, named in every error.
    """
    if split not in SPLITS:
        raise UsageError(f"GSM8K has no split {split!r}; use one of {', '.join(SPLITS)}")
    if location is None or str(location) == HUB_ID:
        return download_split(split, flag)
    return read_rows(split_file(location, split, flag), flag)


def gsm8k_download(location: str | None, fix: str) -> list:
    """What loading GSM8K from `location` fetches: nothing for a local path, else the hub (or GitHub)."""
    if location is not None and str(location) != HUB_ID:
        return []
    from huggingface_hub import constants

    from unfreeze.offline import Download, hub_endpoint

    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    cached = (os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "datasets--" + HUB_ID.replace("/", "--")))
              or os.path.isdir(os.path.join(datasets_cache, HUB_ID.replace("/", "___"))))
    return [Download("GSM8K", (hub_endpoint(), GITHUB_URL.format(split="test")), cached, fix)]
