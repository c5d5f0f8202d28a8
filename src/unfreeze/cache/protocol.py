"""What a training loop asks a cache for, whichever cache it is (in memory or on disk).

A cache holds, for every example of every split, the activations at one point of the network: the input
of stage `start_stage` (see `models/classifier.py`: 0 embeddings, 1..L blocks, L+1 the final norm), or,
when `start_stage` is past the final norm, the pooled feature vector that only the head reads. The loop
needs nothing else: it runs the stages from `start_stage` on (or just the head) on what `rows` returns.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


class ActivationReader(Protocol):
    start_stage: int  # the first stage the loop still runs (final_stage + 1: only the head, on pooled vectors)

    def rows(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        """The stored activations of examples `indices` of `split`: (batch, hidden) pooled vectors, or
        (batch, length, hidden) hidden states zero-padded past the positions a run reads."""
        ...

    def nbytes(self) -> int:
        """Bytes the cache holds (in memory, or on disk)."""
        ...


def holds_pooled(reader: ActivationReader, final_stage: int) -> bool:
    """The reader's rows are pooled vectors (only the head runs on them), not hidden states."""
    return reader.start_stage > final_stage
