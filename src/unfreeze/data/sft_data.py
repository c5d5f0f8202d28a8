"""SFT examples for GSM8K (with or without pause tokens): prompt format, tokenisation, labels, batches.

Prompt format (the reference code base): `"### INPUT: {question}\\n\\n ### Answer:{answer}{eos}"`, with the
loss on the completion (`{answer}{eos}`) only.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from unfreeze.data import gsm8k
from unfreeze.errors import UsageError
from unfreeze.models.control_tokens import IGNORE_INDEX  # the label the model's loss skips

PROMPT_TEMPLATE = "### INPUT: {question}\n\n ### Answer:"


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def encode_prompt(tokenizer: Any, question: str) -> list[int]:
    """Prompt ids, with whatever the tokenizer adds at the start by default (e.g. Llama's BOS)."""
    ids = list(tokenizer(format_prompt(question)).input_ids)
    eos = tokenizer.eos_token_id
    plain = list(tokenizer(format_prompt(question), add_special_tokens=False).input_ids)
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
                   control_tokens: Sequence[str] = (), tokenization: str = "exact") -> Example:
    prompt = encode_prompt(tokenizer, question)
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
                control_tokens: Sequence[str] = (), tokenization: str = "exact") -> EncodedSet:
    """Every row encoded (`tokenization`: "exact" or "reference", see `encode_answer`)."""
    from unfreeze.models.control_vocab import check_pause_tokenization

    if check_pause_tokenization(tokenization) == "reference":
        check_reference_tokenizer(tokenizer, control_tokens)
    examples, truncated, dropped = [], 0, 0
    for row in rows:
        example = encode_example(tokenizer, row["question"], row["answer"], max_length, control_tokens, tokenization)
        truncated += example.truncated
        # A label at position 0 is never predicted (nothing precedes it), so it needs one more.
        if sum(label != IGNORE_INDEX for label in example.labels[1:]) == 0:
            dropped += 1
            continue
        examples.append(example)
    return EncodedSet(examples, truncated, dropped)


def check_reference_tokenizer(tokenizer: Any, control_tokens: Sequence[str]) -> None:
    """The reference tokenisation is the tokenizer's own: each control token must strip both sides."""
    from unfreeze.models.control_vocab import registered_tokenization

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


def read_rows(path: str | Path, answer_field: str = "answer") -> list[dict]:
    """GSM8K-style rows from JSON lines or one JSON array, as {"question", "answer"} dicts.

    `answer_field` picks the answer column (`unfreeze inject-pauses` writes `pause_augmented_answer`
    unless it was run with `--pause_augm_col_name answer`).
    """
    rows = gsm8k.read_rows(path, flag="data", fields=("question", answer_field))
    if not rows:
        raise UsageError(f"data {path} holds no rows")
    return [{"question": row["question"], "answer": row[answer_field]} for row in rows]


def data_files(data: str) -> tuple[Path, Path | None]:
    """(training file, test file or None) of a data folder or a single training file.

    Accepts a folder written by `unfreeze inject-pauses` (train.json, test.json), a plain GSM8K folder
    (train.jsonl, test.jsonl), or one file.
    """
    path = Path(data).expanduser()
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise UsageError(f"data {data}: no such file or folder")
    for train_name, test_name in (("train.json", "test.json"), ("train.jsonl", "test.jsonl")):
        if (path / train_name).is_file():
            test = path / test_name
            return path / train_name, test if test.is_file() else None
    raise UsageError(f"data {data}: expected train.json (from `unfreeze inject-pauses`) or train.jsonl (GSM8K)")


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
