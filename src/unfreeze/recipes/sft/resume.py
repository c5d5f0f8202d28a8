"""Resuming `unfreeze sft`: which checkpoint a run continues from, saving one, and restoring it.

A run folder whose run is unfinished (complete checkpoints in `<out>/checkpoints`, no `metrics.json`)
continues from its latest checkpoint when the same command runs again (`resume: null`, the default);
`resume: true` insists on a checkpoint, `resume: false` starts afresh. A checkpoint written with another
config (apart from the keys in RESUME_NEUTRAL) or another number of processes is refused, naming the key.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unfreeze.config import to_dict
from unfreeze.errors import UsageError
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.training import checkpoints

if TYPE_CHECKING:
    from unfreeze.training.sft_loop import Setup

# Keys that may differ between a checkpoint and the run resuming from it: none changes what is trained.
RESUME_NEUTRAL = ("out", "resume", "save_steps", "save_total_limit", "report_to", "run_name", "run_group",
                  "tracker_dir", "test", "test_data", "test_limit", "test_batch_size", "max_new_tokens",
                  "test_max_length", "merge_lora", "overwrite")


def resume_point(config: SFTConfig, out: Path, num_processes: int) -> Path | None:
    """The checkpoint this run continues from, or None for a fresh start."""
    root = checkpoints.checkpoint_root(out)
    latest = checkpoints.latest_checkpoint(root)
    if config.resume is False:
        return None
    if config.resume is None and (latest is None or (out / "metrics.json").exists()):
        return None
    if latest is None:
        raise UsageError(f"resume: true, but {root} holds no complete checkpoint; unset resume to start afresh")
    info = checkpoints.read_info(latest)
    current = to_dict(config)
    for key in checkpoints.config_differences(info.get("config", {}), current, RESUME_NEUTRAL):
        raise UsageError(f"cannot resume from {latest}: it was trained with {key}={info['config'].get(key)!r}, "
                         f"this run has {key}={current.get(key)!r}; use the same {key}, or resume=false to start "
                         f"afresh (its checkpoints are then removed), or another out")
    if info.get("num_processes", 1) != num_processes:
        raise UsageError(f"cannot resume from {latest}: it was written by {info.get('num_processes')} process(es), "
                         f"this run has {num_processes}; launch as many, or resume=false to start afresh")
    return latest


def start_fresh(out: Path, log: Any) -> None:
    """A new run in `out` removes the checkpoints an earlier run left (they belong to another run)."""
    root = checkpoints.checkpoint_root(out)
    if root.exists():
        shutil.rmtree(root)
        log.info(f"removed the checkpoints of an earlier run in {root}")


def make_resumable(run: Setup, accelerator: Any, log: Any, checkpoint: Path | None) -> None:
    """Register what a checkpoint stores beyond model and optimizer; restore it all from `checkpoint`."""
    accelerator.register_for_checkpointing(run.scheduler, run.state)
    accelerator.register_save_state_pre_hook(checkpoints.keep_only_trainable_weights)
    if checkpoint is None:
        return
    # accelerate saves the unwrapped model's names (`pause_head.weight`, not DDP's `module.pause_head.weight`)
    model = accelerator.unwrap_model(run.model)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    stored = checkpoints.saved_tensor_names(checkpoint)
    if stored != trainable:
        raise UsageError(f"cannot resume from {checkpoint}: it stores {sorted(stored - trainable) or 'no'} "
                         f"tensors this run does not train, and lacks {sorted(trainable - stored) or 'none'}")
    if not (checkpoint / f"random_states_{accelerator.process_index}.pkl").is_file():
        raise UsageError(f"cannot resume from {checkpoint}: no random state of process {accelerator.process_index}")
    checkpoints.load_checkpoint(accelerator, checkpoint)
    state = run.state
    state.running = [loss.to(accelerator.device) for loss in state.running]
    state.resumed_from = state.step
    log.info(f"resumed from {checkpoint}: step {state.step}/{run.total_steps}, epoch {state.epoch + 1}, "
             f"{state.batches_done} of its batches done")


def save_checkpoint(run: Setup, config: SFTConfig, accelerator: Any, log: Any) -> Path:
    root = checkpoints.checkpoint_root(config.out)
    info = {"epoch": run.state.epoch, "num_processes": accelerator.num_processes, "config": to_dict(config)}
    path = checkpoints.save_checkpoint(accelerator, root, run.state.step, info, config.save_total_limit)
    log.info(f"checkpoint: {path}")
    return path
