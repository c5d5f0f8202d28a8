"""Injecting pause tokens into text: pure functions, no I/O.

How an answer is augmented (the rules the tests pin down):

* **Pauses are inserted at character positions of the original answer, with no added spaces.**
  `"a b"` with a pause at position 1 becomes `"a<|pause|> b"`, never `"a <|pause|> b"`. The reference
  script joined space-split words back with `" "`, which doubles spaces next to a pause; inserting the
  bare token string instead makes removal exact: `strip_pauses(augmented, token) == original`, always.
  Tokenisers keep the pause apart from its neighbours because it is added to them as a special token.
* **Pattern pauses.** Each regex pattern of `--n_pauses_per_patterns` puts its count of pauses right
  after each of its matches. Overlaps between patterns follow one rule, *leftmost-longest*: matches are
  taken left to right; of the matches that start at the same position the longest wins (ties: the
  pattern listed first); a match that overlaps an already taken one is dropped, and so is an empty match
  at the position where the previous taken match ends. So with `{"=": 1, " = ": 2}` the text `"a = b"`
  gets two pauses after `" = "` and none after `"="`. (The reference added the counts of every pattern;
  the two rules agree whenever matches of different patterns do not overlap, as with `'{}'`.)
  A newline pattern (`"\\n"` in the JSON, or the regex `\\n`) also puts its count at the very start,
  as in the reference; `n_leading` pauses are added there too.
* **Random pauses** go into *slots*: the boundaries between tokens of the original answer (with a
  tokenizer) or the positions just before each space (without one: the reference split on spaces),
  plus both ends. Every pause picks a slot uniformly and independently, so two pauses may share a slot.
  The count is `n` per answer, or uniform on 0..n with `variable=True`.

Removal is exact only if the pause token cannot overlap itself (no proper prefix that is also a
suffix, like `"aba"`) and does not occur in the original text; `check_pause_token` and
`check_text_has_no_pause` enforce both.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

# The keys that mean "a newline" in --n_pauses_per_patterns: the character itself (JSON "\n") and the
# regex escape (JSON "\\n"). Either one also puts its count of pauses at the very start (reference rule).
NEWLINE_PATTERNS = ("\n", r"\n")


def strip_pauses(text: str, pause_token: str) -> str:
    """The text with every pause token removed: the original answer for an augmented one."""
    return text.replace(pause_token, "")


def count_pauses(text: str, pause_token: str) -> int:
    """How many pause tokens the text holds."""
    return text.count(pause_token)


def check_pause_token(pause_token: str) -> None:
    """Raise ValueError unless pause tokens in a text can be found and removed unambiguously.

    A token that overlaps itself (`"aba"`) can form a new occurrence out of a pause and the text next
    to it, so stripping would eat original characters; a non-empty border rules that out.
    """
    if not pause_token:
        raise ValueError("the pause token must not be empty")
    for size in range(1, len(pause_token)):
        if pause_token[:size] == pause_token[-size:]:
            raise ValueError(
                f"{pause_token!r} overlaps itself (it starts and ends with {pause_token[:size]!r}), so its "
                "occurrences could not be removed exactly; use a token such as '<|pause|>'"
            )


def check_text_has_no_pause(text: str, pause_token: str) -> None:
    """Raise ValueError if the original text already holds the pause token (counts would be wrong)."""
    if pause_token in text:
        raise ValueError(f"the text already contains the pause token {pause_token!r}")


@dataclass(frozen=True)
class PatternRule:
    """One entry of --n_pauses_per_patterns, compiled."""

    pattern: str
    regex: re.Pattern
    n_pauses: int


def compile_patterns(counts: dict) -> list[PatternRule]:
    """{regex: n_pauses} -> rules in the given order; ValueError names the bad entry."""
    if not isinstance(counts, dict):
        raise ValueError(f"must be a JSON object mapping regex -> number of pauses, got {type(counts).__name__}")
    rules = []
    for pattern, n_pauses in counts.items():
        # bool is an int subclass; `true` is almost certainly a typo, not "1 pause".
        if isinstance(n_pauses, bool) or not isinstance(n_pauses, int):
            raise ValueError(f"the count for pattern {pattern!r} must be an integer, got {n_pauses!r}")
        if n_pauses < 0:
            raise ValueError(f"the count for pattern {pattern!r} must be >= 0, got {n_pauses}")
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression ({err})") from None
        rules.append(PatternRule(pattern, regex, n_pauses))
    return rules


def leading_pause_count(rules: Sequence[PatternRule], n_leading: int = 0) -> int:
    """Pauses at the very start: `n_leading` plus the count of the first newline pattern, if any."""
    for rule in rules:
        if rule.pattern in NEWLINE_PATTERNS:
            return n_leading + rule.n_pauses
    return n_leading


def pattern_matches(text: str, rules: Sequence[PatternRule]) -> list[tuple[int, int, int]]:
    """The kept matches as (start, end, n_pauses), left to right, by the leftmost-longest rule."""
    candidates = []
    for order, rule in enumerate(rules):
        if rule.n_pauses == 0:
            continue  # a zero count must not shadow another pattern's match
        for match in rule.regex.finditer(text):
            # Sort key: leftmost first, then longest, then the pattern listed first.
            candidates.append((match.start(), -(match.end() - match.start()), order, match.end(), rule.n_pauses))
    candidates.sort()
    kept, last_end = [], -1
    for start, _neg_len, _order, end, n_pauses in candidates:
        # No overlap with the last kept match, and at most one match ending at any position.
        if start >= last_end and end > last_end:
            kept.append((start, end, n_pauses))
            last_end = end
    return kept


def fixed_insertions(text: str, rules: Sequence[PatternRule], n_leading: int = 0) -> Counter:
    """Position -> number of pauses that do not depend on chance (patterns and leading pauses)."""
    insertions: Counter = Counter()
    leading = leading_pause_count(rules, n_leading)
    if leading:
        insertions[0] += leading
    for _start, end, n_pauses in pattern_matches(text, rules):
        insertions[end] += n_pauses
    return insertions


def space_slots(text: str) -> list[int]:
    """Random-pause slots without a tokenizer: both ends, and just before each space.

    The reference split on `" "`; a text with k spaces has k + 1 words and so k + 2 slots. "Before the
    space" matches GPT-2-style tokens, where the space belongs to the next word (`"a<|pause|> b"`).
    """
    slots = {0, len(text)}
    slots.update(index for index, char in enumerate(text) if char == " ")
    return sorted(slots)


def offset_slots(offsets: Iterable[Sequence[int]], length: int) -> list[int]:
    """Random-pause slots from a fast tokenizer's offset mapping: both ends and every token end.

    Token ends (not starts) are used because tokenizers that trim offsets move the start past a
    leading space but keep the end. Byte tokens that split one character share its offsets, so
    duplicates collapse: a pause never lands inside a character.
    """
    slots = {0, length}
    slots.update(min(max(int(end), 0), length) for _start, end in offsets)
    return sorted(slots)


def token_slots(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`offset_slots` for many texts at once (one batched call to a fast tokenizer)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False)
    return [offset_slots(offsets, len(text)) for offsets, text in zip(encoded["offset_mapping"], texts)]


def draw_random_positions(rng: random.Random, slots: Sequence[int], n_random: int, variable: bool) -> list[int]:
    """Positions of this answer's random pauses: n (or uniform 0..n) draws, each a uniform slot."""
    count = rng.randint(0, n_random) if variable else n_random
    return [slots[rng.randrange(len(slots))] for _ in range(count)]


def insert_pauses(text: str, insertions: dict[int, int], pause_token: str) -> str:
    """The text with `insertions[pos]` pause tokens placed right before character `pos` (no spaces)."""
    pieces, previous = [], 0
    for position in sorted(insertions):
        if not 0 <= position <= len(text):
            raise ValueError(f"insertion position {position} is outside the text (length {len(text)})")
        pieces.append(text[previous:position])
        pieces.append(pause_token * insertions[position])
        previous = position
    pieces.append(text[previous:])
    return "".join(pieces)


@dataclass(frozen=True)
class PauseConfig:
    """Everything that decides how one answer is augmented (the flags of `inject-pauses`)."""

    pause_token: str
    rules: tuple[PatternRule, ...] = ()
    n_random: int = 0
    variable: bool = False
    n_leading: int = 0


@dataclass(frozen=True)
class AnswerPlan:
    """What is computed once per answer and reused for each augmented copy."""

    text: str
    fixed: Counter
    slots: list[int]


def plan_answers(texts: Sequence[str], config: PauseConfig, tokenizer=None) -> list[AnswerPlan]:
    """Pattern pauses and random-pause slots of every answer (the tokenizer runs once, batched)."""
    if config.n_random > 0:
        all_slots = token_slots(tokenizer, texts) if tokenizer is not None else [space_slots(t) for t in texts]
    else:
        all_slots = [[0] for _ in texts]  # never drawn from; skip the tokenizer entirely
    return [AnswerPlan(text, fixed_insertions(text, config.rules, config.n_leading), slots)
            for text, slots in zip(texts, all_slots)]


def augment(plan: AnswerPlan, config: PauseConfig, rng: random.Random) -> tuple[str, int]:
    """One augmented copy of an answer and its number of pauses."""
    insertions = Counter(plan.fixed)
    if config.n_random > 0:
        insertions.update(draw_random_positions(rng, plan.slots, config.n_random, config.variable))
    return insert_pauses(plan.text, insertions, config.pause_token), sum(insertions.values())


def augment_text(text: str, config: PauseConfig, rng: random.Random, tokenizer=None) -> str:
    """Convenience for one text: plan, then augment once."""
    return augment(plan_answers([text], config, tokenizer)[0], config, rng)[0]
