"""One pass of a frozen prefix (`cache/prefix.py`) over token rows, writing hidden states at block boundaries (and
classify's pooled vectors) into arrays: memory-mapped files of the disk store, or arrays in memory.

Hidden states are stored row after row in one flat (positions, width) array per boundary and split, each row's
`free_length` positions (`Targets.offsets` says where a row starts). A pass starts at boundary 1 (the
embeddings) or continues from the values already stored at a later boundary (`Pass.source`): the same
batches (rows sorted by stored length), the same operations from there on, so the same bits as one pass from
the embeddings (positions after a row's stored length are padding, which the mask keeps from every real
position). classify's pooled vectors are computed in the batches its in-memory cache uses (`memory.
build_batches`: the positions the pooling reads) wherever those differ from the stored ones, so a run reading
them from disk equals one that built them in memory, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from unfreeze.cache import memory


@dataclass
class Targets:
    """Where one split's values go: `hidden[b]` flat (positions, width) arrays (row i at `offsets[i]`, `lengths[i]`
    positions), `pooled[b]` (rows, width) arrays."""

    lengths: list[int]
    hidden: dict[int, np.ndarray] = field(default_factory=dict)
    pooled: dict[int, np.ndarray] = field(default_factory=dict)

    @cached_property
    def offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(int).tolist() if self.lengths else []


@dataclass
class Pass:
    """One pass: boundaries `start` .. `stop`; `source(split, rows, length)` gives the stored values at `start`
    (None: start from the embeddings); `pooling_batches`: classify's in-memory batches instead of the stored ones."""

    start: int
    stop: int
    source: Callable[[str, list[int], int], torch.Tensor] | None = None
    pooling_batches: bool = False


def as_stored(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return tensor.view(torch.uint16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def from_stored(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(array))
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def _batches(prefix, rows: list[torch.Tensor], run: Pass, batch_size: int, device: torch.device):
    """(row indices, the batch as the prefix runs it) in the order of the build."""
    if run.pooling_batches:
        for indices in memory.build_batches(prefix.model, rows, batch_size):
            yield indices, memory.trimmed_ids(prefix.model, [rows[i] for i in indices]).to(device)
    else:
        for indices in prefix.batches(rows, batch_size):
            yield indices, prefix.batch([rows[i] for i in indices], device)


@torch.no_grad()
def write_split(prefix, split: str, rows: list[torch.Tensor], positions: list[int], targets: Targets, run: Pass,
                device: torch.device, autocast_dtype: torch.dtype | None, dtype: torch.dtype, batch_size: int) -> int:
    """One pass over `rows` (row i goes to row `positions[i]` of `targets`); returns the positions computed."""
    offsets, computed = targets.offsets, 0
    last_block = prefix.num_blocks
    for indices, batch in _batches(prefix, rows, run, batch_size, device):
        where = [positions[i] for i in indices]
        ids = batch[0] if isinstance(batch, tuple) else batch
        computed += ids.numel()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            hidden = prefix.embed(batch) if run.source is None else run.source(split, where, ids.shape[1]).to(device)
            for boundary in range(run.start, run.stop + 1):
                if boundary > run.start:
                    hidden = prefix.advance(hidden, batch, boundary - 1, boundary)
                if boundary in targets.hidden:
                    stored = as_stored(hidden.to(dtype))
                    for row, at in zip(stored, where):
                        length = targets.lengths[at]
                        targets.hidden[boundary][offsets[at]:offsets[at] + length] = row[:length]
                if boundary in targets.pooled:
                    targets.pooled[boundary][where] = as_stored(prefix.model.pool(hidden, ids).to(dtype))
                if boundary == last_block and last_block + 2 in targets.pooled:
                    # classify's final features (the last block at the pooled position only, `pooled_features`),
                    # so a run from the store equals one from memory bit for bit.
                    pooled = prefix.model.pooled_features(hidden, last_block, ids)
                    targets.pooled[last_block + 2][where] = as_stored(pooled.to(dtype))
    return computed


def write_rows(prefix, tokens: dict[str, list[torch.Tensor]], targets: dict[str, Targets], run: Pass,
               device: torch.device, autocast_dtype: torch.dtype | None, dtype: torch.dtype, batch_size: int,
               writer: Callable = write_split) -> int:
    """Each distinct row once (split by split, as `memory.distinct_rows` forms them), copied where it repeats;
    returns the positions computed. `writer` is `write_split` (tests replace it to stop a build midway)."""
    new_rows, where = memory.distinct_rows(tokens)
    first_at: dict[int, tuple[str, int]] = {}
    for split, indices in where.items():
        for position, index in enumerate(indices):
            first_at.setdefault(index, (split, position))
    computed = 0
    for split in tokens:
        fresh = [position for position, index in enumerate(where[split]) if first_at[index] == (split, position)]
        computed += writer(prefix, split, new_rows[split], fresh, targets[split], run, device, autocast_dtype, dtype,
                           batch_size) or 0
    for split, indices in where.items():
        for position, index in enumerate(indices):
            source, at = first_at[index]
            if (source, at) != (split, position):
                _copy_row(targets[source], at, targets[split], position)
    return computed


def _copy_row(source: Targets, at: int, target: Targets, position: int) -> None:
    begin, end = source.offsets[at], source.offsets[at] + source.lengths[at]
    start = target.offsets[position]
    for boundary, flat in target.hidden.items():
        flat[start:start + end - begin] = source.hidden[boundary][begin:end]
    for boundary, pooled in target.pooled.items():
        pooled[position] = source.pooled[boundary][at]


# --- what a build writes, and in how many passes -------------------------------------------------------


def pooling_entry(model) -> tuple[str, dict]:
    """The folder name of a classifier's pooled vectors, and the pooling it names."""
    pooling = {"token_pos": model.token_pos, "average": model.average}
    return "pooled-" + hashlib.sha256(json.dumps(pooling, sort_keys=True).encode()).hexdigest()[:12], pooling


@dataclass
class Request:
    """What a run asks of the store: hidden boundaries, and (classify) the pooled vectors of its pooling."""

    boundaries: list[int]
    pooled: list[int]  # boundaries of pooled vectors (empty: none)
    pooled_name: str | None
    pooling: dict | None


def request_of(prefix, boundaries, pooled: str | None) -> Request:
    """What a run asks for: `boundaries`, and for a classifier its pooling's vectors at every boundary ("all") or
    the final ones ("final")."""
    last = prefix.num_blocks
    if pooled is None or not hasattr(prefix.model, "pool"):
        return Request(sorted(set(boundaries)), [], None, None)
    name, pooling = pooling_entry(prefix.model)
    wanted = list(range(1, last + 3)) if pooled == "all" else [last + 2]
    return Request(sorted(set(boundaries)), wanted, name, pooling)


def plan_passes(prefix, tokens, request: Request, missing: list[int], found,
                fp32: bool) -> list[tuple[Pass, list[int], list[int]]]:
    """The passes that write `missing` hidden boundaries and (if asked) the pooled vectors: (pass, hidden
    boundaries, pooled boundaries), continuing from the latest boundary `found` (a `disk.DiskCache`) holds
    before the first one needed where it is exact (`fp32`). The pooled vectors join the stored states' pass
    where the pooling reads every stored position (the same batches), else they get their own pass in
    classify's in-memory batches."""
    last = prefix.num_blocks
    # pooled vectors at boundary b <= L+1 pool the states there; the final ones (L+2) run the last block at the
    # pooled position from boundary L (`pooled_features`)
    pooled_stop = max([b for b in request.pooled if b <= last + 1] + ([last] if last + 2 in request.pooled else []),
                      default=0)
    same = request.pooled and all(memory.stored_length(prefix.model, row) == prefix.free_length(row)
                                  for rows in tokens.values() for row in rows)
    passes = []
    pooled_here = request.pooled if same else []
    if missing or pooled_here:
        first = min([*missing, *([min(request.pooled[0], last)] if pooled_here else [])])
        stored = [b for b in (found.boundaries if found and fp32 else []) if b <= first]
        start = max(stored) if stored else 1
        stop = max([*missing, *([pooled_stop] if pooled_here else [])])
        source = (lambda split, rows, length, b=start: found.hidden(split, b, rows, length)) if stored else None
        passes.append((Pass(start, stop, source), missing, pooled_here))
    if request.pooled and not same:
        passes.append((Pass(1, pooled_stop, pooling_batches=True), [], request.pooled))
    return passes
