"""The words of a choice of what trains, as written: parsed and checked here, resolved on a model in `trainable`.

One grammar for `unfreeze classify --trainable_layers`, `unfreeze sft --trainable_layers` (also spelled
`--trainable`), `unfreeze export`, `unfreeze suggest --candidates` and `unfreeze.select`:

    CHOICE  := TERM ("+" TERM)*                     several terms train the union of what each names
    TERM    := last_layer | last_block | last_two_blocks | last_blocks:N | blocks:SET | all | bias | norms
             | lora | lora_alternative                              the presets: they train the output layer too
             | attention:BLOCKS | mlp:BLOCKS | lora:BLOCKS | lora_alternative:BLOCKS
             | embeddings | new_tokens | pause_head                 the parts: only what they name
    BLOCKS  := last_block | last_two_blocks | last_blocks:N | blocks:SET | all
    SET     := N or A-B (0-based, inclusive), joined by commas: 3,7,9-11

What a word means on a model (which modules, from structure) is `trainable`'s; here only the text is
checked, so a bad choice is one line before any model is read: an unknown word, a range written high to low
(`blocks:9-3`), `last_blocks:0`, two LoRA terms. Whether the blocks exist is checked against the model
(`Blocks.indices`), on the meta device where the recipes check their options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unfreeze.errors import UsageError

PRESETS = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative", "bias", "norms")
PARTS = ("embeddings", "new_tokens", "pause_head")
PER_BLOCK = ("attention", "mlp", "lora", "lora_alternative")  # parts taking a block set: attention:BLOCKS, ...
SYNTAX = ("last_blocks:N, blocks:SET (SET: 0-based indices and ranges, e.g. 3,7,9-11), attention:BLOCKS, "
          "mlp:BLOCKS, lora:BLOCKS (BLOCKS: last_block, last_blocks:N, blocks:SET or all), embeddings, new_tokens, "
          "pause_head; join several with +")
_LAST_BLOCKS = re.compile(r"last_blocks:(\d+)")
_BLOCK_SET = re.compile(r"blocks:(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)")
_ITEM = re.compile(r"(\d+)(?:-(\d+))?")


class ChoiceError(UsageError):
    """A choice that does not parse: one line `FLAG TERM: WHY`; `value_error` is the same for a config parser."""

    def __init__(self, flag: str, term: str, why: str):
        super().__init__(f"{flag} {term}: {why}")
        self.term, self.why = term, why

    def value_error(self, text: str) -> ValueError:
        """`'TEXT': WHY` (the term named where it is one of several): the form config.py's messages take."""
        return ValueError(f"{text!r}: {self.why if self.term in (text, repr(text)) else f'{self.term}: {self.why}'}")


@dataclass(frozen=True)
class Blocks:
    """A set of blocks as written: the last `last` ones, the `ranges` (0-based, inclusive), or every block."""

    text: str
    last: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()

    def indices(self, num_blocks: int, flag: str, term: str) -> list[int]:
        """The 0-based blocks of a model with `num_blocks` blocks, in order; one line where one does not exist."""
        if self.last is not None:
            if self.last > num_blocks:
                raise ChoiceError(flag, term, f"N must be between 1 and the model's {num_blocks} blocks")
            return list(range(num_blocks - self.last, num_blocks))
        if not self.ranges:  # all
            return list(range(num_blocks))
        beyond = [last for _, last in self.ranges if last >= num_blocks]
        if beyond:
            raise ChoiceError(flag, term, f"the model has blocks 0-{num_blocks - 1} (no block {beyond[0]}); use "
                                          f"blocks:A-B with A <= B <= {num_blocks - 1}")
        return sorted({i for first, last in self.ranges for i in range(first, last + 1)})


@dataclass(frozen=True)
class Term:
    """One word of a choice: its kind (a preset name or a part), the blocks it names, and how it was written."""

    kind: str  # last_layer, blocks, all, bias, norms, lora, lora_alternative; attention, mlp, embeddings, ...
    text: str
    blocks: Blocks | None = None  # blocks (the preset), attention, mlp, and lora restricted to blocks
    preset: bool = True  # a preset trains the output layer too; a part only what it names

    @property
    def lora(self) -> bool:
        return self.kind in ("lora", "lora_alternative")


def _blocks(text: str, flag: str, term: str) -> Blocks | None:
    """BLOCKS (see the module docstring), or None when `text` is not one."""
    fixed = {"last_block": 1, "last_two_blocks": 2}
    if text in fixed:
        return Blocks(text, last=fixed[text])
    if text == "all":
        return Blocks(text)
    if match := _LAST_BLOCKS.fullmatch(text):
        count = int(match.group(1))
        if count < 1:
            raise ChoiceError(flag, term, "N must be between 1 and the model's number of blocks")
        return Blocks(text, last=count)
    if match := _BLOCK_SET.fullmatch(text):
        ranges = []
        for item in match.group(1).split(","):
            first, last = _ITEM.fullmatch(item).groups()
            first, last = int(first), int(last if last is not None else first)
            if first > last:
                raise ChoiceError(flag, term, f"a range A-B needs A <= B ({item} runs backwards; write {last}-{first})")
            ranges.append((first, last))
        return Blocks(text, ranges=tuple(ranges))
    return None


def parse_term(text: str, flag: str = "--trainable_layers") -> Term:
    """One term (no `+`), checked; UsageError naming it and the valid words otherwise."""
    if text in ("last_layer", "all", "bias", "norms", "lora", "lora_alternative"):
        return Term(text, text)
    if text in PARTS:
        return Term(text, text, preset=False)
    head, _, rest = text.partition(":")
    if head in PER_BLOCK and rest:
        blocks = _blocks(rest, flag, text)
        if blocks is not None:
            return Term(head, text, blocks, preset=False)
    blocks = _blocks(text, flag, text)
    if blocks is not None and text != "all":
        return Term("blocks", text, blocks)
    raise ChoiceError(flag, repr(text), f"invalid choice, not one of: {', '.join(PRESETS)}, or {SYNTAX}")


def parse_choice(text: str, flag: str = "--trainable_layers") -> list[Term]:
    """`a+b+c` -> its terms (each once, in order); one line for a bad term or two LoRA terms."""
    pieces = [piece.strip() for piece in str(text).split("+")]
    if not any(pieces):
        parse_term("", flag)  # nothing at all: the invalid-choice line, with every word
    if not all(pieces):
        raise ChoiceError(flag, repr(text), "an empty term; join terms with single +, e.g. lora+new_tokens")
    terms = list({term.text: term for term in (parse_term(piece, flag) for piece in pieces)}.values())
    adapters = [term.text for term in terms if term.lora]
    if len(adapters) > 1:
        raise ChoiceError(flag, text, f"{' and '.join(adapters)} are two LoRA terms; a choice has one (restrict it "
                                      "to blocks with lora:BLOCKS)")
    if len(terms) > 1 and "all" in {term.kind for term in terms}:
        raise ChoiceError(flag, text, "all already trains every parameter; drop the other terms")
    return terms


def check_syntax(text: str, flag: str = "--trainable_layers") -> str:
    """`text` when it parses (bounds are checked against the model later); UsageError otherwise."""
    parse_choice(text, flag)
    return text
