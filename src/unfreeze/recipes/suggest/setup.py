"""The one place where `unfreeze suggest` reads data and builds models: through classify's own functions.

A candidate is `unfreeze classify` with `--trainable_layers NAME` and every other option of the suggest
command (`SuggestConfig` builds on classify's options): the same split, tokens, padding, model, head and
LoRA initialisation, and the same training loop, so a candidate trained to the end of its epochs is the
run `unfreeze classify` would make, on any decoder model and any labelled data classify accepts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from unfreeze.recipes.classify.config import ClassifierOptions, ClassifyConfig
from unfreeze.recipes.classify.inputs import Inputs
from unfreeze.recipes.suggest.config import SuggestConfig


@dataclass
class Setup:
    """The inputs of every candidate, and the frozen base model they are copied from."""

    classify: ClassifyConfig  # the classify run a candidate's full run is (its trainable_layers set per candidate)
    inputs: Inputs
    base_model: torch.nn.Module  # built with the run's seed: what the cache and the signals read
    after_head: torch.Tensor  # torch's random state right after the head: where LoRA's matrices are drawn
    build_s: float  # seconds of building the model (wall)
    load_s: float = 0.0  # seconds of work every run of a sweep spends before training: the data read and
    # tokenised, the model's config checked, the model built (`cost.work_seconds`, as a later run of a process)
    once_s: float = 0.0  # what only the first run of a process spends on top (imports, first reads of files)
    check_s: float = 0.0  # the options checked and the data read and tokenised (part of load_s)

    @property
    def tokens(self) -> dict:
        return self.inputs.tokens

    @property
    def labels(self) -> dict:
        return self.inputs.labels

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    @property
    def max_length(self) -> int:
        return self.inputs.max_length

    def candidate(self, name: str) -> ClassifyConfig:
        """The classify options of candidate `name`."""
        return dataclasses.replace(self.classify, trainable_layers=name)

    def build(self, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
        """A fresh classifier of `seed` (nothing trainable chosen yet) and the random state after its head."""
        from unfreeze.recipes.classify.model import build_model

        model, after_head = build_model(dataclasses.replace(self.classify, seed=seed), self.inputs.source,
                                        self.inputs.config, self.inputs.pad_token_id,
                                        len(self.inputs.splits.class_names))
        return model.to(self.device), after_head


def classify_config(cfg: SuggestConfig, **changes) -> ClassifyConfig:
    """The classify options a candidate's full run uses: every classify option of the suggest command (its
    output folder is suggest's own, so a candidate run has none)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ClassifierOptions)}
    values.update(out=None, overwrite=False, **changes)
    return ClassifyConfig(**values)


RECHECK_UNDER_S = 5.0  # a first check shorter than this is timed once more (see `prepare`)


def _silent() -> logging.Logger:
    """A logger that says nothing: the second, timing-only check repeats the first one's lines."""
    quiet = logging.getLogger("unfreeze.suggest.timing")
    quiet.propagate, quiet.handlers = False, [logging.NullHandler()]
    return quiet


def prepare(cfg: SuggestConfig, log: logging.Logger) -> Setup:
    """Check every input and read the data as classify does before it writes anything; build the base model."""
    from unfreeze.recipes.classify.recipe import check
    from unfreeze.recipes.suggest.cost import timed, work_seconds

    candidate = classify_config(cfg, trainable_layers="last_layer")
    (base, inputs), wall, cpu = timed(lambda: check(candidate, log))
    use_cpu = inputs.device.type != "cuda"
    cold = checked = work_seconds(wall, cpu if use_cpu else None)
    if cold < RECHECK_UNDER_S:
        # Once more, timing only: a process's first check pays its imports and first reads (~1.5 s here), which a
        # sweep pays once, not per run. Where the check itself takes longer (a GGUF tokenizer is parsed: ~7 s)
        # those seconds are a small share of it, and repeating it would cost more than it corrects.
        _, wall, cpu = timed(lambda: check(candidate, _silent()))
        checked = min(work_seconds(wall, cpu if use_cpu else None), cold)
    setup = Setup(base, inputs, None, None, 0.0)
    (setup.base_model, setup.after_head), wall, cpu = timed(lambda: setup.build(base.seed))
    setup.build_s = wall
    setup.load_s = checked + work_seconds(wall, cpu if use_cpu else None)
    setup.once_s, setup.check_s = cold - checked, checked
    return setup
