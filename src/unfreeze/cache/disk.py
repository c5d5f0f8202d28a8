"""An on-disk, memory-mapped frozen-prefix store shared by every run (and later run) that freezes the same network.

What a frozen prefix computes depends on the frozen weights, the architecture and its config, the token ids of
every split, the mask semantics (causal, padding), the precision and the device type -- not on how a run reads
it afterwards. So the store's key hashes exactly those (`cache_key`), and one folder serves classify runs of
any pooling and any boundary, and sft runs (`cache/sft_prefix.py`), of that network and data:

    <cache_dir>/<key>/meta.json           the rows (their stored positions per split), width, dtype
    <cache_dir>/<key>/hidden-<b>/         hidden states at boundary b (see `cache/prefix.py`), rows one after another
    <cache_dir>/<key>/pooled-<p>/         classify: pooled vectors of pooling p at the boundaries its entry.json lists

Each entry is built in a temporary folder and renamed into place after its `entry.json` is written; the first
build writes the whole key folder that way (`meta.json` last), so a killed build leaves only a `.tmp` folder no
reader opens. A build adds only what is missing, and a missing boundary is computed from the latest boundary
already stored before it (fp32 stores: they hold the exact values) instead of from the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from unfreeze.cache import build
from unfreeze.cache.build import pooling_entry  # noqa: F401 - where a run's pooled vectors are, for readers
from unfreeze.errors import UsageError

FORMAT = 3  # bump when the layout changes: old caches then never match
_write_split = build.write_split  # one split's pass (tests replace it to stop a build midway)


# --- identity -----------------------------------------------------------------------------------------


def weights_fingerprint(tensors) -> str:
    """A hash of the bytes (and shapes, dtypes) of `tensors` (or of every parameter and buffer of modules), in order."""
    digest = hashlib.blake2b(digest_size=16)
    items = [t for item in tensors for t in ([*item.parameters(), *item.buffers()]
                                             if isinstance(item, torch.nn.Module) else [item])]
    for tensor in {id(t): t for t in items}.values():
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


def as_prefix(model):
    """classify's `DecoderClassifier` as a `cache.prefix.ClassifierPrefix`; a prefix as it is."""
    from unfreeze.cache.prefix import ClassifierPrefix
    from unfreeze.models.classifier import DecoderClassifier

    return ClassifierPrefix(model) if isinstance(model, DecoderClassifier) else model


def cache_key(model, tokens: dict[str, list[torch.Tensor]], precision: str, device: torch.device) -> str:
    """What the stored values depend on, hashed: the key of a store folder (no pooling: see the module docstring)."""
    prefix = as_prefix(model)
    parts = {"format": FORMAT, "weights": weights_fingerprint(prefix.weight_tensors()), **prefix.identity(),
             "tokens": tokens_fingerprint(tokens), "precision": precision, "device": device.type}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# --- the store as read back ---------------------------------------------------------------------------


@dataclass
class DiskCache:
    """A store folder, memory-mapped: `hidden(split, b, rows)`, `row(split, b, i)` and `pooled(split, b)`."""

    folder: Path
    meta: dict
    pooled_name: str | None = None  # the entry of this run's pooling (classify)
    entries: dict = field(default_factory=dict)  # entry name -> its entry.json

    @property
    def boundaries(self) -> list[int]:
        return sorted(e["boundary"] for e in self.entries.values() if "boundary" in e)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.meta["dtype"] == "bfloat16" else torch.float32

    def _map(self, path: Path, shape: tuple[int, ...]) -> np.memmap:
        stored = np.uint16 if self.dtype == torch.bfloat16 else np.float32
        return np.memmap(path, dtype=stored, mode="r", shape=shape)

    def flat(self, split: str, boundary: int) -> np.memmap:
        """Every stored position of `split` at `boundary`, rows one after another: (positions, width)."""
        if boundary not in self.boundaries:
            raise KeyError(f"boundary {boundary} is not stored (stored: {self.boundaries})")
        total = sum(self.meta["lengths"][split])
        return self._map(self.folder / f"hidden-{boundary}" / f"{split}.bin", (total, self.meta["hidden_size"]))

    def rows(self, split: str, boundary: int) -> list[torch.Tensor]:
        """Every row's stored positions at `boundary`, (length, width) each: views of the file, read when used."""
        flat, lengths = self.flat(split, boundary), self.meta["lengths"][split]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        return [build.from_stored(flat[start:start + n], self.dtype) for start, n in zip(starts, lengths)]

    def hidden(self, split: str, boundary: int, indices, length: int | None = None) -> torch.Tensor:
        """(batch, length, width) states at a stored `boundary` for rows `indices`: each row's stored positions,
        zeros after them (`length`: the store's row length unless given)."""
        flat, lengths = self.flat(split, boundary), self.meta["lengths"][split]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        index = [int(i) for i in indices]
        out = torch.zeros(len(index), length or self.meta["length"], self.meta["hidden_size"], dtype=self.dtype)
        for slot, i in enumerate(index):
            n = min(lengths[i], out.shape[1])
            out[slot, :n] = build.from_stored(np.array(flat[offsets[i]:offsets[i] + n]), self.dtype)
        return out

    def pooled(self, split: str, boundary: int, indices=None) -> torch.Tensor:
        """(n, width) pooled vectors of this run's pooling at `boundary` (all examples, or `indices`)."""
        entry = self.entries.get(self.pooled_name or "", {})
        if boundary not in entry.get("boundaries", []):
            raise KeyError(f"no pooled vectors at boundary {boundary} for this pooling")
        shape = (len(entry["boundaries"]), self.meta["sizes"][split], self.meta["hidden_size"])
        mapped = self._map(self.folder / self.pooled_name / f"{split}.bin", shape)[entry["boundaries"].index(boundary)]
        return build.from_stored(np.array(mapped if indices is None else mapped[np.asarray(indices)]), self.dtype)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())

    def reader(self, start_stage: int) -> "DiskReader":
        """The activations a classify run starting at `start_stage` reads (`cache.protocol.ActivationReader`):
        pooled vectors past the final norm, else the hidden states stored at that boundary."""
        if start_stage <= self.meta["num_boundaries"] - 1 and start_stage not in self.boundaries:
            raise KeyError(f"boundary {start_stage} is not stored (stored: {self.boundaries})")
        return DiskReader(self, start_stage)


@dataclass
class DiskReader:
    """One boundary of a `DiskCache`, read as the classify loop reads any cache."""

    cache: DiskCache
    start_stage: int

    def rows(self, split: str, indices) -> torch.Tensor:
        index = [int(i) for i in indices]
        if self.start_stage >= self.cache.meta["num_boundaries"]:  # past the final norm: pooled vectors
            return self.cache.pooled(split, self.start_stage, index)
        return self.cache.hidden(split, self.start_stage, index)

    def nbytes(self) -> int:
        return self.cache.nbytes()


def _entries(folder: Path) -> dict:
    found = {}
    for entry in folder.iterdir():
        try:
            found[entry.name] = json.loads((entry / "entry.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a temporary folder, or one a killed build left
    return found


def open_cache(cache_dir: str | os.PathLike, key: str, boundaries=(),
               pooled_name: str | None = None) -> DiskCache | None:
    """The store `key` if it is whole and holds `boundaries`; None otherwise (never a partial build)."""
    folder = Path(cache_dir) / key
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not meta.get("complete") or meta.get("format") != FORMAT:
        return None
    cache = DiskCache(folder, meta, pooled_name, _entries(folder))
    if not set(boundaries) <= set(cache.boundaries):
        return None
    used = [e for name, e in cache.entries.items() if name == pooled_name or e.get("boundary") in boundaries]
    cache.meta = {**meta, "build_s": round(sum(e.get("build_s", 0.0) for e in used), 3)}
    return cache


# --- building -----------------------------------------------------------------------------------------


def estimate_bytes(sizes: dict[str, int], length: int, hidden_size: int, num_boundaries: int,
                   hidden_boundaries, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of the pooled vectors at every boundary, bytes of one boundary's hidden states at `length` per row)."""
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


def _remove_dead_temporaries(folder: Path, prefix: str) -> None:
    """Temporary folders of builds whose process is gone (killed); a live build's is left alone."""
    for tmp in folder.glob(f".{prefix}.tmp-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def _temporary(parent: Path, name: str) -> Path:
    _remove_dead_temporaries(parent, name)
    tmp = parent / f".{name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    return tmp


def _write_entries(prefix, tokens, root: Path, passes, lengths: dict, dtype: torch.dtype, device: torch.device,
                   autocast_dtype, batch_size: int, request: build.Request, folders: dict[str, Path]) -> None:
    """Run `passes`, writing each new entry into its own temporary folder under `root` (name -> folder, in
    `folders`, as they are made: a failed build removes them)."""
    stored = np.uint16 if dtype == torch.bfloat16 else np.float32
    width = prefix.hidden_size
    for run, hidden, pooled in passes:
        begin = time.perf_counter()
        targets = {split: build.Targets(lengths[split]) for split in tokens}
        for boundary in hidden:
            folders[f"hidden-{boundary}"] = folder = _temporary(root, f"hidden-{boundary}")
            for split, target in targets.items():
                target.hidden[boundary] = np.memmap(folder / f"{split}.bin", dtype=stored, mode="w+",
                                                    shape=(max(sum(target.lengths), 1), width))
        if pooled:
            folders[request.pooled_name] = folder = _temporary(root, request.pooled_name)
            for split, target in targets.items():
                mapped = np.memmap(folder / f"{split}.bin", dtype=stored, mode="w+",
                                   shape=(len(pooled), max(len(target.lengths), 1), width))
                target.pooled = {b: mapped[i] for i, b in enumerate(pooled)}
        build.write_rows(prefix, tokens, targets, run, device, autocast_dtype, dtype, batch_size,
                         writer=lambda *args: _write_split(*args))
        seconds = round(time.perf_counter() - begin, 3)
        for target in targets.values():
            for mapped in [*target.hidden.values(), *target.pooled.values()]:
                mapped.flush()
        for boundary in hidden:
            _finish(folders[f"hidden-{boundary}"], {"boundary": boundary, "start": run.start, "build_s": seconds})
        if pooled:
            _finish(folders[request.pooled_name], {"pooling": request.pooling, "boundaries": pooled,
                                                   "start": run.start, "build_s": seconds})


def _finish(folder: Path, entry: dict) -> None:
    (folder / "entry.json").write_text(json.dumps(entry, indent=2), encoding="utf-8")  # last file: marks it whole


def _move_into(folders: dict[str, Path], target: Path) -> None:
    """Rename each finished entry into `target` (an entry another build finished first stays: it is the same)."""
    for name, folder in folders.items():
        try:
            os.replace(folder, target / name)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)


_BY_PRECISION = object()


def get_or_build(model, tokens: dict[str, list[torch.Tensor]], cache_dir: str | os.PathLike, boundaries,
                 precision: str, device: torch.device, budget_bytes: float | None = None, batch_size: int = 16,
                 pooled: str | None = "all", autocast_dtype=_BY_PRECISION, dtype: torch.dtype | None = None
                 ) -> tuple[DiskCache, bool]:
    """The store of (frozen network, tokens, precision, device) holding `boundaries` and, for a classifier, the
    pooled vectors of its pooling (`pooled`: "all" boundaries, "final" only, None); what is missing is built.

    `model`: classify's `DecoderClassifier`, or a prefix (`cache/prefix.py`). Returns (cache, built). Hidden
    boundaries over the disk budget (default: a quarter of the free disk under `cache_dir`) are left out; the
    runs starting there then run their prefix each step. The build runs under bf16 autocast and stores bf16
    unless `precision` is fp32 (classify's two); sft names its own (`autocast_dtype`, `dtype`).
    """
    prefix = as_prefix(model)
    key = cache_key(prefix, tokens, precision, device)
    if autocast_dtype is _BY_PRECISION:
        autocast_dtype = torch.bfloat16 if precision not in ("fp32", "float32") else None
    dtype = dtype or (torch.bfloat16 if autocast_dtype is not None else torch.float32)
    request = build.request_of(prefix, boundaries, pooled)
    lengths = {split: [prefix.free_length(row) for row in rows] for split, rows in tokens.items()}
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = open_cache(cache_dir, key, (), request.pooled_name)
    stored = found.boundaries if found is not None else []
    have_pooled = found is not None and set(request.pooled) <= set(
        found.entries.get(request.pooled_name, {}).get("boundaries", []))
    per = torch.empty(0, dtype=dtype).element_size()
    hidden_bytes = sum(map(sum, lengths.values())) * prefix.hidden_size * per
    rows = sum(map(len, lengths.values()))
    pooled_bytes = 0 if have_pooled else rows * len(request.pooled) * prefix.hidden_size * per
    budget = budget_bytes if budget_bytes is not None else shutil.disk_usage(cache_dir).free / 4
    kept = fit_disk_budget(pooled_bytes, hidden_bytes, sorted({*request.boundaries, *stored}), budget)
    missing = [b for b in request.boundaries if b in kept and b not in stored]
    if found is not None and not missing and (have_pooled or not request.pooled):
        return open_cache(cache_dir, key, [b for b in request.boundaries if b in stored], request.pooled_name), False
    passes = build.plan_passes(prefix, tokens, replace(request, pooled=[] if have_pooled else request.pooled), missing,
                               found, dtype == torch.float32)
    was_training = prefix.model.training
    prefix.model.eval()
    root = found.folder if found is not None else _temporary(cache_dir, key)
    folders: dict[str, Path] = {}
    try:
        _write_entries(prefix, tokens, root, passes, lengths, dtype, device, autocast_dtype, batch_size, request,
                       folders)
        if found is not None:
            _move_into(folders, root)
        else:
            _first_build(root, folders, cache_dir / key, {
                "key": key, "format": FORMAT, "complete": True, "dtype": str(dtype).replace("torch.", ""),
                "sizes": {s: len(r) for s, r in tokens.items()}, "lengths": lengths, "hidden_size": prefix.hidden_size,
                "length": max(len(r) for rows in tokens.values() for r in rows),
                "num_boundaries": prefix.num_blocks + 2})
    except BaseException:
        for folder in [root] if found is None else folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        prefix.model.train(was_training)
    return open_cache(cache_dir, key, [b for b in request.boundaries if b in kept], request.pooled_name), True


def _first_build(root: Path, folders: dict[str, Path], target: Path, meta: dict) -> None:
    """Entries in place inside `root`, `meta.json` last, then `root` renamed to `target` whole."""
    for name, folder in folders.items():
        os.replace(folder, root / name)
    (root / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    try:
        os.replace(root, target)
    except OSError:  # another build made the folder first: add what it lacks
        _move_into({name: root / name for name in folders}, target)
        shutil.rmtree(root, ignore_errors=True)
