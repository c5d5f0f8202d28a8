"""An sft candidate: sft's own setup and training loop (`training.sft_loop.SFTTraining`), run in rounds.

A candidate is the `unfreeze sft` run of its config: `recipes.sft.recipe.setup` builds its model, data, loaders,
AdamW and schedule exactly as that run does (seeded the same), and the same loop takes its steps. Two things
make slices of many runs in one process equal to each run alone, bit for bit on CPU:
* each arm keeps its own global random state (dropout, LoRA's dropout draw from it) and swaps it in around
  its work, so the arms' steps interleaving in rounds never shifts another arm's draws;
* a round's scoring is the loop's own validation (`SFTTraining.evaluate`), which draws nothing.
`evaluate()` returns (-validation loss, validation loss): halving keeps the highest first value.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from unfreeze.recipes.suggest import cost


@contextmanager
def own_random_state(holder: "SFTArm"):
    """Run with the arm's global random state (CPU, and CUDA where present); keep what the work left of it."""
    outside = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.set_rng_state(holder.rng[0])
    if holder.rng[1] is not None:
        torch.cuda.set_rng_state_all(holder.rng[1])
    try:
        yield
    finally:
        holder.rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.set_rng_state(outside[0])
        if outside[1] is not None:
            torch.cuda.set_rng_state_all(outside[1])


def peak_bytes(config: Any, loop: Any) -> int:
    """The estimate of a full run's peak memory (`cost.predict_peak_bytes`): activations are kept for backward by
    the blocks after the cached boundary (every block without a cache; none when only the LM head's side trains)."""
    hf = loop.accelerator.unwrap_model(loop.run.model).hf_model.config
    blocks, info = hf.num_hidden_layers, loop.run.cache_info
    # a stored boundary b holds the states before stage b (stage 0 the embeddings, 1..blocks the blocks)
    with_grad = blocks if info["kind"] == "none" else max(0, blocks + 1 - int(info.get("boundary", 0)))
    return cost.predict_peak_bytes(loop.run.trainable.total_params, loop.run.trainable.trainable_params,
                                   config.batch_size, config.max_length, hf.hidden_size, with_grad,
                                   hf.num_attention_heads)


@dataclass
class SFTArm:
    name: str
    config: Any  # the candidate's SFTConfig: the sft run it is
    loop: Any  # SFTTraining
    setup_s: float  # seconds of work its setup took (model, data, cache): every run of the sweep pays it
    rng: tuple = (None, None)  # its global random state between slices (`own_random_state`)
    keep_weights: bool = False  # an eliminated arm keeps its model (its weights are scored by generation later)
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (steps, -val loss, val loss)
    losses: dict = field(default_factory=dict)  # the loop's last validation losses (eval_loss, eval_lm_loss, ...)
    step_walls: list[float] = field(default_factory=list)
    step_cpus: list[float] = field(default_factory=list)
    eval_times: list[tuple[float, float]] = field(default_factory=list)

    total_steps: int = 0  # of its full run
    steps_done: int = 0
    uses_cpu_time: bool = True  # CPU time counts the work on the CPU; a CUDA step's work is the GPU's
    facts: dict = field(default_factory=dict)  # what trains (counts) and what its cache holds, kept once freed

    @classmethod
    def start(cls, name: str, config: Any, loop: Any, setup_s: float, keep_weights: bool = False) -> "SFTArm":
        """An arm right after its setup: the random state its run would continue with is taken as its own."""
        state = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(name, config, loop, setup_s, state, keep_weights, total_steps=loop.run.total_steps,
                   steps_done=loop.state.step, uses_cpu_time=loop.accelerator.device.type != "cuda",
                   facts={"trainable_params": loop.run.trainable.trainable_params,
                          "total_params": loop.run.trainable.total_params, "cache": loop.run.cache_info["kind"],
                          "predicted_peak_bytes": peak_bytes(config, loop)})

    @property
    def model(self):
        return None if self.loop is None else self.loop.accelerator.unwrap_model(self.loop.run.model)

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    def advance(self, steps: int) -> None:
        """`steps` more optimizer steps of the candidate's run, each timed (wall and CPU)."""
        with own_random_state(self):
            for _ in range(max(min(steps, self.total_steps - self.steps_done), 0)):
                begin, begin_cpu = time.perf_counter(), time.process_time()
                self.loop.advance(1)
                self.step_walls.append(time.perf_counter() - begin)
                self.step_cpus.append(time.process_time() - begin_cpu)
                self.steps_done = self.loop.state.step

    def evaluate(self) -> tuple[float, float]:
        """(-loss, loss) of the validation split (sft's eval_loss); a step count already scored is reused."""
        if self.history and self.history[-1][0] == self.steps_done:
            return self.history[-1][1], self.history[-1][2]
        begin, begin_cpu = time.perf_counter(), time.process_time()
        with own_random_state(self):
            self.losses = self.loop.evaluate()
        self.eval_times.append((time.perf_counter() - begin, time.process_time() - begin_cpu))
        loss = float(self.losses["eval_loss"])
        self.history.append((self.steps_done, -loss, loss))
        return -loss, loss

    def step_cost(self) -> float:
        return cost.step_estimate(self.step_walls, self.step_cpus if self.uses_cpu_time else None,
                                  torch.get_num_threads())

    def eval_cost(self) -> float:
        values = sorted(cost.work_seconds(wall, cpu if self.uses_cpu_time else None) for wall, cpu in self.eval_times)
        return values[(len(values) - 1) // 2] if values else 0.0

    def release(self) -> None:
        """Free the model and optimizer of an eliminated arm (its history stays), unless its weights are still
        to be scored."""
        if not self.keep_weights:
            self.free()

    def free(self) -> None:
        self.loop = None
