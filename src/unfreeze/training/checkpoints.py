"""Checkpoints a long run can be resumed from: `<out>/checkpoints/step-00000040/`.

A checkpoint is what `accelerate`'s `save_state` writes -- the model's *trainable* tensors (frozen ones are
rebuilt from the model source, see `keep_only_trainable_weights`), the optimizer, the random-number states
of every process and the objects registered with `register_for_checkpointing` (the LR schedule, the
loop's position) -- plus `checkpoint.json` with the step and the run's config.

Atomic: everything is written into a hidden staging folder (`.step-00000040.partial`), flushed to disk and
then renamed into place. A run killed during a save leaves only the staging folder, which never counts as
a checkpoint and is removed by the next save.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

from unfreeze.files import atomic_write_json, read_json

FOLDER = "checkpoints"
INFO_FILE = "checkpoint.json"
FORMAT = "unfreeze-checkpoint"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_root(out: str | os.PathLike) -> Path:
    return Path(out) / FOLDER


def complete_checkpoints(root: Path) -> list[Path]:
    """The finished checkpoints under `root`, oldest first (staging folders never match the name)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / INFO_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_info(checkpoint: Path) -> dict[str, Any]:
    return read_json(checkpoint / INFO_FILE)


def keep_only_trainable_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """`accelerate` save-state hook: store only the tensors that train (frozen ones come from the source).

    `weights[i]` is model i's state dict (keys as in `named_parameters`, wrapper prefixes included).
    """
    for i, model in enumerate(models):
        names = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[i] = {key: value.contiguous() for key, value in weights[i].items() if key in names}


def save_checkpoint(accelerator: Any, root: Path, step: int, info: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `step` atomically and keep the `keep_last` newest; every process must call this."""
    target = root / f"step-{step:08d}"
    staging = root / f".{target.name}.partial"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)  # every process writes its RNG state
    accelerator.wait_for_everyone()
    if main:
        atomic_write_json(staging / INFO_FILE, {"format": FORMAT, "step": step, **info})
        _flush_folder(staging)
        shutil.rmtree(target, ignore_errors=True)  # only ever a leftover of an earlier, abandoned run
        os.replace(staging, target)
        _fsync_dir(root)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in root.glob(".step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator: Any, checkpoint: Path) -> None:
    """Restore what `save_checkpoint` wrote into the prepared objects (same model, optimizer, registrations)."""
    # strict=False: the file holds only the trainable tensors (the caller checked which).
    accelerator.load_state(str(checkpoint), strict=False)


def saved_tensor_names(checkpoint: Path) -> set[str]:
    """Names of the model tensors stored in a checkpoint."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str]) -> list[str]:
    """Keys whose values differ between the checkpoint's config and this run's (`ignore`d keys excepted)."""
    skip = set(ignore)
    return [key for key in dict.fromkeys([*saved, *current])
            if key not in skip and saved.get(key) != current.get(key)]


def _flush_folder(folder: Path) -> None:
    """fsync every file, so that the rename cannot reach the disk before the contents do."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
