"""An on-disk, memory-mapped frozen-prefix cache shared by every candidate (and every later run).

One forward pass over every example stores

  * `pooled`: the pooled vector at every block boundary (one vector per example per boundary; small), and
  * `hidden`: the (length, hidden) states at the boundaries that candidates start from (under an
    attention mask, every model but the reference's GPT-2: the real positions, zeros after them).

Boundary `b` is the input of stage `b` (the output of stages `0 .. b-1`, see `models/classifier.py`):
`b = 1` is the embeddings' output, `b = final_stage` the last block's, `b = final_stage + 1` the final
norm's. The stored values are computed exactly as `cache/memory.py` computes them (same stage
calls, same autocast, same storage dtype), so a run started from them equals the in-memory cache and
the uncached path.

Files live in `<cache_dir>/<key>/`, where the key hashes everything the values depend on: the frozen
model's weights (bytes) and config, the token ids of every split (data, tokenizer and context length), the pooling,
the precision and the device type. A build writes into a temporary folder and renames it into place
after `meta.json` is written, so a killed build leaves only a `.tmp` folder that no reader opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unfreeze.cache.memory import build_batches, trimmed_ids, distinct_rows, stored_length
from unfreeze.errors import UsageError

FORMAT = 2  # bump when the layout changes: old caches then never match


# --- identity -----------------------------------------------------------------------------------------


def weights_fingerprint(modules) -> str:
    """A hash of the bytes (and shapes, dtypes) of every parameter and buffer of `modules`, in order."""
    digest = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{tuple(data.shape)}{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def tokens_fingerprint(tokens: dict[str, list[torch.Tensor]]) -> str:
    """A hash of every split's token ids, in order (data content, tokenizer and context length)."""
    digest = hashlib.blake2b(digest_size=16)
    for split in sorted(tokens):
        digest.update(split.encode())
        for row in tokens[split]:
            digest.update(len(row).to_bytes(4, "little"))
            digest.update(row.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model, tokens: dict[str, list[torch.Tensor]], precision: str, device: torch.device) -> str:
    """What the stored values depend on, hashed: the key of a cache folder."""
    stage_modules = [m for stage in model.stage_modules() for m in stage]
    parts = {
        "format": FORMAT,
        "weights": weights_fingerprint(stage_modules),
        "architecture": type(model).__name__,
        # The same weights under another config (head count, rotary base, norm eps, attention kernel)
        # compute other values.
        "config": json.loads(model.body.config.to_json_string(use_diff=False)),
        "tokens": tokens_fingerprint(tokens),
        "lengths": sorted({len(r) for rows in tokens.values() for r in rows}),
        "pooling": {"token_pos": model.token_pos, "average": model.average, "causal": model.causal,
                    "pad_token_id": model.pad_token_id, "reference_padding": model.reference_padding},
        "precision": precision,
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# --- the cache as read back ---------------------------------------------------------------------------


@dataclass
class DiskCache:
    """A complete cache folder, memory-mapped: `pooled(split, b)` and `hidden(split, b, indices)`."""

    folder: Path
    meta: dict

    @property
    def boundaries(self) -> list[int]:
        return list(self.meta["hidden_boundaries"])

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.meta["dtype"] == "bfloat16" else torch.float32

    def _map(self, name: str, shape: list[int]) -> np.memmap:
        stored = np.uint16 if self.dtype == torch.bfloat16 else np.float32
        return np.memmap(self.folder / name, dtype=stored, mode="r", shape=tuple(shape))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(array))  # a private, writable copy
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    def pooled(self, split: str, boundary: int, indices=None) -> torch.Tensor:
        """(n, hidden) pooled vectors at `boundary` (all examples, or `indices`)."""
        n = self.meta["sizes"][split]
        mapped = self._map(f"pooled_{split}.bin", [self.meta["num_boundaries"], n, self.meta["hidden_size"]])
        rows = mapped[boundary - 1] if indices is None else mapped[boundary - 1][np.asarray(indices)]
        return self._tensor(rows)

    def hidden(self, split: str, boundary: int, indices) -> torch.Tensor:
        """(batch, length, hidden) states at a stored `boundary` for the examples `indices`; only the
        positions the run reads are stored (zeros after them: the reader cuts to its `needed_length`)."""
        if boundary not in self.boundaries:
            raise KeyError(f"boundary {boundary} is not stored (stored: {self.boundaries})")
        shape = [self.meta["sizes"][split], self.meta["length"], self.meta["hidden_size"]]
        return self._tensor(self._map(f"hidden_{boundary}_{split}.bin", shape)[np.asarray(indices)])

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir())

    def reader(self, start_stage: int) -> "DiskReader":
        """The activations a run starting at `start_stage` reads (`cache.protocol.ActivationReader`):
        pooled vectors past the final norm, else the hidden states stored at that boundary."""
        if start_stage <= self.meta["num_boundaries"] - 1 and start_stage not in self.boundaries:
            raise KeyError(f"boundary {start_stage} is not stored (stored: {self.boundaries})")
        return DiskReader(self, start_stage)


@dataclass
class DiskReader:
    """One boundary of a `DiskCache`, read as the loop reads any cache."""

    cache: DiskCache
    start_stage: int

    def rows(self, split: str, indices) -> torch.Tensor:
        index = [int(i) for i in indices]
        if self.start_stage >= self.cache.meta["num_boundaries"]:  # past the final norm: pooled vectors
            return self.cache.pooled(split, self.start_stage, index)
        return self.cache.hidden(split, self.start_stage, index)

    def nbytes(self) -> int:
        return self.cache.nbytes()


def open_cache(cache_dir: str | os.PathLike, key: str, boundaries=()) -> DiskCache | None:
    """The complete cache `key` if it holds `boundaries`; None otherwise (never a partial build)."""
    folder = Path(cache_dir) / key
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not meta.get("complete") or meta.get("format") != FORMAT:
        return None
    if not set(boundaries) <= set(meta["hidden_boundaries"]):
        return None
    return DiskCache(folder, meta)


# --- building -----------------------------------------------------------------------------------------


def estimate_bytes(sizes: dict[str, int], length: int, hidden_size: int, num_boundaries: int,
                   hidden_boundaries, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of the pooled vectors, bytes of one boundary's hidden states)."""
    per = torch.empty(0, dtype=dtype).element_size()
    n = sum(sizes.values())
    return n * num_boundaries * hidden_size * per, n * length * hidden_size * per


def fit_disk_budget(pooled_bytes: int, hidden_bytes: int, boundaries: list[int], budget: float) -> list[int]:
    """The hidden boundaries that fit beside the pooled vectors, latest first (they are the cheapest to
    train from and the most candidates start there); the pooled vectors must fit or it is an error."""
    if pooled_bytes > budget:
        raise UsageError(f"--cache_budget_gb {budget / 2**30:.3g}: even the pooled features need "
                         f"{pooled_bytes / 2**30:.3g} GiB; raise it or pass --cache_dir on a larger disk")
    kept, used = [], pooled_bytes
    for boundary in sorted(boundaries, reverse=True):
        if used + hidden_bytes <= budget:
            kept.append(boundary)
            used += hidden_bytes
    return sorted(kept)


def _remove_dead_temporaries(cache_dir: Path, key: str) -> None:
    """Temporary folders of builds whose process is gone (killed); a live build's is left alone."""
    for tmp in cache_dir.glob(f".{key}.tmp-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


@torch.no_grad()
def _write_split(model, rows: list[torch.Tensor], positions: list[int], files: dict, device, autocast_dtype, dtype,
                 batch_size) -> None:
    """One pass of the frozen network over `rows`, every boundary's output written where it is wanted.

    Batches are formed as the in-memory cache forms them (`memory`): examples grouped by the
    positions the pooled output depends on (`stored_length`: the real tokens under an attention mask,
    nothing after the pooled position under a causal mask) and each batch run only up to its longest;
    only those positions are written (the rest of a row stays zero, positions nothing reads). Row i of
    `rows` is written at `positions[i]` of the split's files.
    """
    final = model.final_stage
    for indices in build_batches(model, rows, batch_size):
        ids = trimmed_ids(model, [rows[i] for i in indices]).to(device)
        lengths = [stored_length(model, rows[i]) for i in indices]
        where = np.asarray([positions[i] for i in indices])
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            hidden = model.embed(ids)
            for boundary in range(1, final + 2):
                if boundary == final:  # the last block's input: where the final pooled vector starts from
                    before_last = hidden
                if boundary > 1:  # the output of stage boundary-1 (a block, or the final norm)
                    hidden = model.run_stages(hidden, boundary - 1, boundary, input_ids=ids)
                if boundary in files["hidden"]:
                    stored = _as_stored(hidden.to(dtype))
                    for row, i, length in zip(stored, where, lengths):
                        files["hidden"][boundary][i, :length] = row[:length]
                if boundary == final + 1:
                    # The final features as classify computes them (the last block at the pooled position
                    # only, `pooled_features`), so a run from the disk cache equals one from memory bit for bit.
                    pooled = model.pooled_features(before_last, final - 1, ids)
                else:
                    pooled = model.pool(hidden, ids)
                files["pooled"][boundary - 1, where] = _as_stored(pooled.to(dtype))


def _write_distinct_rows(model, tokens: dict[str, list[torch.Tensor]], files: dict, device, autocast_dtype, dtype,
                         batch_size) -> None:
    """Compute each distinct example once, in the in-memory cache's batches (`memory.distinct_rows`,
    split by split: the same bits), and copy it to where it repeats."""
    new_rows, where = distinct_rows(tokens)
    first_at: dict[int, tuple[str, int]] = {}
    for split, indices in where.items():
        for position, index in enumerate(indices):
            first_at.setdefault(index, (split, position))
    for split in tokens:
        fresh = [position for position, index in enumerate(where[split]) if first_at[index] == (split, position)]
        _write_split(model, new_rows[split], fresh, files[split], device, autocast_dtype, dtype, batch_size)
    for split, indices in where.items():
        for position, index in enumerate(indices):
            source, at = first_at[index]
            if (source, at) != (split, position):
                files[split]["pooled"][:, position] = files[source]["pooled"][:, at]
                for boundary, mapped in files[split]["hidden"].items():
                    mapped[position] = files[source]["hidden"][boundary][at]


def _as_stored(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return tensor.view(torch.uint16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def build(model, tokens: dict[str, list[torch.Tensor]], cache_dir: str | os.PathLike, key: str,
          hidden_boundaries, device: torch.device, autocast_dtype: torch.dtype | None,
          batch_size: int = 16) -> DiskCache:
    """Run the frozen network once over every split and store the cache `key` (atomically)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(cache_dir, key)
    dtype = torch.bfloat16 if autocast_dtype is not None else torch.float32
    stored = np.uint16 if dtype == torch.bfloat16 else np.float32
    lengths = {len(r) for rows in tokens.values() for r in rows}
    if len(lengths) != 1:
        raise UsageError("the disk cache needs every example padded to one length; drop --no_padding")
    length, hidden_size = lengths.pop(), int(model.hidden_size)
    num_boundaries = model.final_stage + 1
    tmp = cache_dir / f".{key}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    was_training = model.training
    model.eval()
    begin = time.perf_counter()
    try:
        files = {split: {"pooled": np.memmap(tmp / f"pooled_{split}.bin", dtype=stored, mode="w+",
                                             shape=(num_boundaries, len(rows), hidden_size)),
                         "hidden": {b: np.memmap(tmp / f"hidden_{b}_{split}.bin", dtype=stored, mode="w+",
                                                 shape=(len(rows), length, hidden_size)) for b in hidden_boundaries}}
                 for split, rows in tokens.items()}
        _write_distinct_rows(model, tokens, files, device, autocast_dtype, dtype, batch_size)
        for split_files in files.values():
            for mapped in [split_files["pooled"], *split_files["hidden"].values()]:
                mapped.flush()
        del files
        meta = {"key": key, "format": FORMAT, "complete": True, "dtype": str(dtype).replace("torch.", ""),
                "sizes": {s: len(r) for s, r in tokens.items()}, "length": length, "hidden_size": hidden_size,
                "num_boundaries": num_boundaries, "hidden_boundaries": sorted(hidden_boundaries),
                "build_s": round(time.perf_counter() - begin, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")  # last file: marks it whole
        target = cache_dir / key
        if target.exists():  # an older cache of the same key that lacked a boundary
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return DiskCache(target, meta)


def get_or_build(model, tokens: dict[str, list[torch.Tensor]], cache_dir: str | os.PathLike, boundaries,
                 precision: str, device: torch.device, budget_bytes: float | None = None,
                 batch_size: int = 16) -> tuple[DiskCache, bool]:
    """The cache of (model, tokens, pooling, precision, device): reused when complete, else built.

    Returns (cache, built). Hidden boundaries over the disk budget (default: a quarter of the free disk
    under `cache_dir`) are left out; the candidates starting there then run their prefix each step.
    """
    key = cache_key(model, tokens, precision, device)
    autocast_dtype = torch.bfloat16 if precision != "fp32" else None
    sizes = {split: len(rows) for split, rows in tokens.items()}
    length = max(len(r) for rows in tokens.values() for r in rows)
    dtype = torch.bfloat16 if autocast_dtype is not None else torch.float32
    pooled_bytes, hidden_bytes = estimate_bytes(sizes, length, int(model.hidden_size), model.final_stage + 1,
                                                boundaries, dtype)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    budget = budget_bytes if budget_bytes is not None else shutil.disk_usage(cache_dir).free / 4
    kept = fit_disk_budget(pooled_bytes, hidden_bytes, list(boundaries), budget)
    found = open_cache(cache_dir, key, kept)
    if found is not None:
        return found, False
    older = open_cache(cache_dir, key)  # the same inputs with other boundaries: a rebuild keeps them too
    if older is not None:
        kept = fit_disk_budget(pooled_bytes, hidden_bytes, sorted({*kept, *older.boundaries}), budget)
    return build(model, tokens, cache_dir, key, kept, device, autocast_dtype, batch_size), True
