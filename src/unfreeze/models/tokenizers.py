"""Tokenizers: from a folder (Hugging Face files or OpenAI's encoder.json + vocab.bpe), a .gguf file, or
the hub; and the token a model pads with.
"""

from __future__ import annotations

import json
from pathlib import Path

from unfreeze.errors import UsageError
from unfreeze.models.gguf import is_gguf, split_source


def offline_error(what: str, source: str, flag: str, err: Exception) -> UsageError:
    """A load that failed: the error in one line, and the flag that takes a local path instead."""
    return UsageError(
        f"could not load {what} {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); "
        f"if this machine is offline, pass a local folder with {flag}"
    )


def _gpt2_bpe_tokenizer(folder: Path):
    """OpenAI's original files: encoder.json (= vocab.json) and vocab.bpe (= merges.txt)."""
    from transformers import GPT2TokenizerFast

    vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]
    # transformers 5: vocab_file=/merges_file= would silently build an EMPTY tokenizer; pass the data.
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    if len(tokenizer) < 2:
        raise UsageError(f"tokenizer files in {folder} produced an empty vocabulary")
    return tokenizer


def load_tokenizer(source: str, flag: str = "--tokenizer", fix: str = ""):
    """A tokenizer from a folder (HF files, or encoder.json+vocab.bpe), a .gguf file (its embedded
    vocabulary) or a hub id.

    `fix` is appended to the error when the folder holds no tokenizer (e.g. "; pass --tokenizer FOLDER"
    when `source` is the model folder the user named for another reason).
    """
    from transformers import AutoTokenizer

    if is_gguf(source):
        return _gguf_tokenizer(source, flag, fix)
    folder = Path(source).expanduser()
    no_files = (f"{flag} {source}: no tokenizer files found (expected tokenizer.json, vocab.json+merges.txt "
                f"or encoder.json+vocab.bpe){fix}")
    if folder.is_dir():
        if (folder / "encoder.json").exists() and (folder / "vocab.bpe").exists() and not (
            folder / "tokenizer.json"
        ).exists() and not (folder / "vocab.json").exists():
            return _gpt2_bpe_tokenizer(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise UsageError(no_files) from err
        if not _usable(tokenizer):  # a model folder without tokenizer files
            raise UsageError(no_files)
        return tokenizer
    if folder.exists():
        raise UsageError(f"{flag} {source} is a file; pass the folder that holds the tokenizer files")
    if source.startswith((".", "/", "~")) or Path(source).suffix or source.count("/") > 1:
        raise UsageError(f"{flag} {source}: folder does not exist")
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # network, auth, missing repo: all end in the same advice
        raise offline_error("tokenizer", source, flag, err) from None


def _usable(tokenizer) -> bool:
    """transformers 5 builds an EMPTY tokenizer from files it cannot use (a model folder without tokenizer
    files): every text would become zero tokens and a run would train on nothing."""
    return len(tokenizer) >= 2 and bool(tokenizer("a b", add_special_tokens=False)["input_ids"])


def _gguf_tokenizer(source: str, flag: str, fix: str):
    from transformers import AutoTokenizer

    folder, extra = split_source(source, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as err:  # noqa: BLE001 - a GGUF without a tokenizer, or one transformers cannot convert
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise UsageError(f"{flag} {source}: could not read the tokenizer of the GGUF file ({type(err).__name__}: "
                         f"{first}); pass a tokenizer folder{fix}") from None
    if not _usable(tokenizer):
        raise UsageError(f"{flag} {source}: the GGUF file holds no usable tokenizer; pass a tokenizer folder{fix}")
    return tokenizer


def pad_token_id(tokenizer, config=None) -> int | None:
    """The token a model pads with: the tokenizer's pad token, else its eos token, else the config's (a list
    of eos ids gives its first); None when there is none."""
    candidates = [tokenizer.pad_token_id, tokenizer.eos_token_id]
    if config is not None:
        candidates += [getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)]
    for value in candidates:
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and value >= 0:
            return value
    return None
