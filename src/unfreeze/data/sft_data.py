"""SFT examples (GSM8K or any prompt/completion rows, with or without pause tokens): prompt format,
tokenisation, labels, batches, and reading the rows from JSON/JSONL/CSV/TSV/Parquet files.

Prompt format: a template with one `{prompt}` field; the default is the reference code base's
`"### INPUT: {prompt}\\n\\n ### Answer:"`, followed by the completion `{answer}{eos}`, with the loss on the
completion only. Inside this module a row is `{"question": prompt text, "answer": completion text}`,
whatever the columns of the file were called (`read_rows` maps them).

The prompt and the answer are tokenised *separately* and concatenated, so no token ever straddles
the prompt/answer boundary. Control tokens are special tokens (never split, never merged with their
neighbours), and `encode_answer` tokenises the answer without them and puts their ids back at their
token boundaries. Together: tokenising a pause-augmented answer and dropping the control ids gives
exactly the token ids of the original answer.

`tokenization="reference"` instead tokenises the answer in one piece with a tokenizer whose control
tokens strip the whitespace around them (`register_control_tokens(..., "reference")`), which is what the
PauseToken reference trained on: `"48<|pause|> clips"` gives `48`, `<|pause|>`, `clips` (not ` clips`).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from unfreeze.data import gsm8k
from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import IGNORE_INDEX  # the label the model's loss skips

PROMPT_TEMPLATE = gsm8k.PROMPT_TEMPLATE  # the PauseToken reference's GSM8K prompt, the default


def check_template(template: str, flag: str = "prompt_template") -> str:
    """`template` if it is a format string whose only field is `{prompt}` (at least once), else a UsageError."""
    fix = "write the prompt as {prompt} and literal braces as {{ }}"
    try:
        fields = [parsed[1:] for parsed in string.Formatter().parse(template) if parsed[1] is not None]
    except ValueError as err:
        raise UsageError(f"{flag} {template!r} is not a format string ({err}); {fix}") from None
    for name, spec, conversion in fields:
        if name != "prompt" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise UsageError(f"{flag} {template!r} has the field {shown}; the only field is {{prompt}} ({fix})")
    if not fields:
        raise UsageError(f"{flag} {template!r} has no {{prompt}} field; {fix}")
    return template


def format_prompt(question: str, template: str = PROMPT_TEMPLATE) -> str:
    return template.format(prompt=question)


def encode_prompt(tokenizer: Any, question: str, template: str = PROMPT_TEMPLATE) -> list[int]:
    """Prompt ids, with whatever the tokenizer adds at the start by default (e.g. Llama's BOS)."""
    text = format_prompt(question, template)
    ids = list(tokenizer(text).input_ids)
    eos = tokenizer.eos_token_id
    plain = list(tokenizer(text, add_special_tokens=False).input_ids)
    if eos is not None and ids and ids[-1] == eos and (not plain or plain[-1] != eos):
        ids = ids[:-1]  # tokenizers that append EOS by default: the prompt is not the end of the text
    return ids


def encode_answer(tokenizer: Any, answer: str, control_tokens: Sequence[str] = (),
                  tokenization: str = "exact") -> list[int]:
    """Answer ids followed by EOS (the completion the model learns).

    "exact": control tokens are cut out of the text, the rest is tokenised in one piece, and the control
    ids are put back at the token boundary where they stood (character offsets). Dropping them therefore
    gives exactly the ids of the original answer, with any tokenizer: also with those that would start the
    text after a special token with a new word-prefix (SentencePiece-style "always" prefix schemes).
    "reference": the whole answer goes through the tokenizer, whose control tokens must strip their
    neighbouring whitespace (see `check_reference_tokenizer`), as the PauseToken reference's did.
    """
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no EOS token; the completion needs one to end")
    present = [t for t in control_tokens if t in answer]
    if not present or tokenization == "reference":
        return list(tokenizer(answer, add_special_tokens=False).input_ids) + [tokenizer.eos_token_id]
    pattern = re.compile("|".join(re.escape(t) for t in sorted(present, key=len, reverse=True)))
    pieces, inserts, position, clean_length = [], [], 0, 0  # inserts: (offset in the clean text, id)
    for match in pattern.finditer(answer):
        pieces.append(answer[position:match.start()])
        clean_length += match.start() - position
        inserts.append((clean_length, tokenizer.convert_tokens_to_ids(match.group())))
        position = match.end()
    pieces.append(answer[position:])
    encoded = tokenizer("".join(pieces), add_special_tokens=False, return_offsets_mapping=True)
    ids, k = [], 0
    for token_id, (start, _end) in zip(encoded.input_ids, encoded.offset_mapping):
        while k < len(inserts) and inserts[k][0] <= start:  # a pause inside a token goes after it
            ids.append(inserts[k][1])
            k += 1
        ids.append(token_id)
    ids.extend(token_id for _, token_id in inserts[k:])
    return ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; aligned with input_ids (the model shifts)
    truncated: bool = False
    hidden: torch.Tensor | None = None  # final hidden states, when `unfreeze.cache.final_hidden` cached them


def encode_example(tokenizer: Any, question: str, answer: str, max_length: int,
                   control_tokens: Sequence[str] = (), tokenization: str = "exact",
                   template: str = PROMPT_TEMPLATE) -> Example:
    prompt = encode_prompt(tokenizer, question, template)
    completion = encode_answer(tokenizer, answer, control_tokens, tokenization)
    ids = prompt + completion
    labels = [IGNORE_INDEX] * len(prompt) + completion
    truncated = len(ids) > max_length
    return Example(ids[:max_length], labels[:max_length], truncated)


@dataclass
class EncodedSet:
    examples: list[Example]
    n_truncated: int  # longer than max_length: cut at max_length (kept if any answer token is left)
    n_dropped: int  # truncated so far that no answer token was left: removed


def encode_rows(tokenizer: Any, rows: Sequence[dict], max_length: int,
                control_tokens: Sequence[str] = (), tokenization: str = "exact",
                template: str = PROMPT_TEMPLATE) -> EncodedSet:
    """Every row encoded (`tokenization`: "exact" or "reference", see `encode_answer`; `template`: the
    prompt format)."""
    from unfreeze.models.control.vocab import check_pause_tokenization

    if check_pause_tokenization(tokenization) == "reference":
        check_reference_tokenizer(tokenizer, control_tokens)
    examples, truncated, dropped = [], 0, 0
    for row in rows:
        example = encode_example(tokenizer, row["question"], row["answer"], max_length, control_tokens, tokenization,
                                 template)
        truncated += example.truncated
        # A label at position 0 is never predicted (nothing precedes it), so it needs one more.
        if sum(label != IGNORE_INDEX for label in example.labels[1:]) == 0:
            dropped += 1
            continue
        examples.append(example)
    return EncodedSet(examples, truncated, dropped)


def check_reference_tokenizer(tokenizer: Any, control_tokens: Sequence[str]) -> None:
    """The reference tokenisation is the tokenizer's own: each control token must strip both sides."""
    from unfreeze.models.control.vocab import registered_tokenization

    for token in control_tokens:
        found = registered_tokenization(tokenizer, token)
        if found != "reference":
            raise UsageError(f"pause_tokenization=reference, but the tokenizer registers {token!r} as "
                             f"{found or 'no added token'}; build the model with pause_tokenization='reference'")


def reference_tokenization_changes(tokenizer: Any, answer: str, control_tokens: Sequence[str]) -> bool:
    """Whether the reference tokenisation gives `answer` other text tokens than the exact one (control ids
    dropped from both). `tokenizer` must strip around its control tokens (reference registration)."""
    ids = set(tokenizer.convert_tokens_to_ids(list(control_tokens)))
    exact = [i for i in encode_answer(tokenizer, answer, control_tokens, "exact") if i not in ids]
    reference = [i for i in encode_answer(tokenizer, answer, control_tokens, "reference") if i not in ids]
    return exact != reference


class Collator:
    """Right-pads a list of examples into tensors; padding is masked out of attention and loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if examples[0].hidden is not None:
            hidden = torch.zeros((len(examples), width, examples[0].hidden.shape[-1]), dtype=examples[0].hidden.dtype)
            for i, e in enumerate(examples):
                hidden[i, : len(e.input_ids)] = e.hidden
            batch["cached_hidden"] = hidden
        return batch


def pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # any id works: padded positions are masked and unlabelled


# --- files ---------------------------------------------------------------------------------------------


# Read as tables by their extension; every other file is JSON Lines or one JSON array, whatever its name
# says (the reference pipeline writes .json files in either form).
SEPARATORS = {".csv": ",", ".tsv": "\t"}
TABLE_SUFFIXES = (*SEPARATORS, ".parquet")
TRAIN_FILES = ("train.json", "train.jsonl", "train.csv", "train.tsv", "train.parquet")


def read_rows(path: str | Path, answer_field: str = "answer", prompt_column: str = "question") -> list[dict]:
    """Prompt/completion rows of one file, as {"question": prompt, "answer": completion} dicts.

    `prompt_column` and `answer_field` (the completion column) name the file's columns; GSM8K's are the
    defaults (`unfreeze inject-pauses` writes `pause_augmented_answer` unless it was run with
    `--pause_augm_col_name answer`). A missing or non-text column, or an empty completion, is a UsageError
    naming the column and the columns the row has.
    """
    path = Path(path)
    rows = check_columns(read_table(path), str(path), prompt_column, answer_field)
    if not rows:
        raise UsageError(f"data {path} holds no rows")
    return [{"question": row[prompt_column], "answer": row[answer_field]} for row in rows]


def read_table(path: Path, flag: str = "data") -> list:
    """The raw rows of one file: CSV/TSV (every cell as text), Parquet, else JSON Lines or a JSON array."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{flag} {path}: cannot read the file ({err})") from None
        return gsm8k.parse_json_rows(text, str(path), flag)
    import pandas as pd

    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # Cells stay text ("42" is not the number 42) and an empty cell is "" (not NaN).
            frame = pd.read_csv(path, sep=SEPARATORS[suffix], dtype=str, keep_default_na=False)
    except Exception as err:  # pandas and pyarrow raise many types for an unreadable file; all end the same
        first = (str(err).splitlines() or [""])[0][:160]
        raise UsageError(f"{flag} {path}: cannot read it as {suffix[1:].upper()} ({type(err).__name__}: {first})") from None
    return frame.to_dict(orient="records")


def check_columns(rows: list, source: str, prompt_column: str, completion_column: str,
                  flag: str = "data") -> list[dict]:
    """Every row is an object whose prompt and completion columns are text, the completion not empty."""
    wanted = {"prompt_column": prompt_column, "completion_column": completion_column}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UsageError(f"{flag} {source}: row {number} is not a JSON object")
        has = ", ".join(map(str, row)) or "none"
        for key, column in wanted.items():
            if not isinstance(row.get(column), str):
                problem = "has no" if column not in row else "has a non-text"
                among = ", ".join(map(repr, wanted.values()))
                raise UsageError(f"{flag} {source}: row {number} {problem} {column!r} field ({key}; it lacks string "
                                 f"fields among {among}; it has: {has})")
        if not row[completion_column].strip():
            raise UsageError(f"{flag} {source}: row {number} has an empty {completion_column!r} field (completion_column): "
                             f"nothing to learn; its columns: {has}")
    return rows


def data_files(data: str) -> tuple[Path, Path | None]:
    """(training file, test file or None) of a data folder or a single training file.

    Accepts a folder written by `unfreeze inject-pauses` (train.json, test.json), a plain GSM8K folder
    (train.jsonl, test.jsonl), a folder with train.csv, train.tsv or train.parquet (no GSM8K test file:
    those are not GSM8K), or one file.
    """
    path = Path(data).expanduser()
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise UsageError(f"data {data}: no such file or folder")
    for train_name in TRAIN_FILES:
        if (path / train_name).is_file():
            test = path / train_name.replace("train", "test", 1)
            return path / train_name, test if test.is_file() and test.suffix in gsm8k.EXTENSIONS else None
    raise UsageError(f"data {data}: expected train.json (from `unfreeze inject-pauses`), train.jsonl (GSM8K), "
                     f"train.csv, train.tsv or train.parquet")


def split_train_val(rows: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then the first `val_fraction` of it is validation (10% by default)."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * val_fraction))
    if n_val >= len(rows):
        raise UsageError(f"{len(rows)} rows are too few to split off a validation set")
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def count_containing(rows: Sequence[dict], token: str) -> int:
    """How many answers contain `token` (e.g. to warn about a data set without pauses)."""
    return sum(token in row["answer"] for row in rows)
