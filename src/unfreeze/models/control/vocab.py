"""Control tokens in the tokenizer: registered right after the model's vocabulary, and how they split text.

`pause_tokenization` says how a control token meets its neighbours:

* "exact" (default): an AddedToken without strip flags. Our SFT encoder cuts control tokens out before
  tokenising, so the answer's own tokens are unchanged (dropping the control ids gives the original's).
* "reference": an AddedToken with lstrip/rstrip, as the PauseToken reference registered `<|pause|>`: the
  token swallows the whitespace (newlines included) on both sides, so `"48<|pause|> clips"` becomes
  `48`, `<|pause|>`, `clips` instead of ` clips`.

The flags live in the tokenizer (saved with it), so a saved model folder keeps its tokenisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unfreeze.errors import UsageError

# Filler names for tokenizers that are shorter than the model's vocabulary (padded embedding matrices).
FILLER_TOKEN = "<|unfreeze_unused_{}|>"
PAUSE_TOKENIZATIONS = ("exact", "reference")


def check_pause_tokenization(mode: str) -> str:
    if mode not in PAUSE_TOKENIZATIONS:
        raise UsageError(f"pause_tokenization={mode!r} is not one of: {', '.join(PAUSE_TOKENIZATIONS)}")
    return mode


def register_control_tokens(tokenizer: Any, tokens: Sequence[str], base_vocab_size: int,
                            tokenization: str = "exact") -> list[int]:
    """Add `tokens` as special tokens with ids base_vocab_size, base_vocab_size+1, ...; return the ids.

    `tokenization="reference"` registers them with lstrip/rstrip (they swallow neighbouring whitespace,
    as in the PauseToken reference); "exact" without. Tokens already present get the requested flags.
    """
    from transformers import AddedToken

    strip = check_pause_tokenization(tokenization) == "reference"
    if not tokens:
        return []
    if len(set(tokens)) != len(tokens):
        raise UsageError(f"control tokens must be distinct, got {list(tokens)}")
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        if len(tokenizer) > base_vocab_size:
            raise UsageError(f"the tokenizer has {len(tokenizer)} tokens but the model only {base_vocab_size} "
                             f"rows; control tokens must come right after the model's vocabulary")
        # A model whose embedding matrix is padded beyond the tokenizer: name the unused rows so that the
        # control tokens land after the model's vocabulary.
        fillers = [FILLER_TOKEN.format(i) for i in range(base_vocab_size - len(tokenizer))]
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in fillers], special_tokens=True)
    # Present or not, each token is (re-)added with the requested flags; re-adding keeps its id.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=strip, rstrip=strip) for t in tokens
                          if t in missing or registered_tokenization(tokenizer, t) != tokenization],
                         special_tokens=True)
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]
    expected = list(range(base_vocab_size, base_vocab_size + len(tokens)))
    if ids != expected:
        raise UsageError(f"control tokens {list(tokens)} have ids {ids} in the tokenizer, expected {expected} "
                         f"(right after the model's {base_vocab_size}-token vocabulary)")
    return ids


def registered_tokenization(tokenizer: Any, token: str) -> str | None:
    """How the tokenizer splits `token` off its neighbours: "reference" (it strips the whitespace on both
    sides), "exact" (neither), "mixed" (one side), or None when `token` is not an added token."""
    for added in tokenizer.added_tokens_decoder.values():
        if added.content == token:
            if added.lstrip and added.rstrip:
                return "reference"
            return "exact" if not (added.lstrip or added.rstrip) else "mixed"
    return None
