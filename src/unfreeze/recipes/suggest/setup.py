"""The one place where `unfreeze suggest` reads data and builds models: through classify's own functions.

A candidate is `unfreeze classify` with `--trainable_layers NAME` and every other option of the suggest
command (`SuggestConfig` builds on classify's options): the same split, tokens, padding, model, head and
LoRA initialisation, and the same training loop, so a candidate trained to the end of its epochs is the
run `unfreeze classify` would make, on any decoder model and any labelled data classify accepts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
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
    build_s: float  # seconds one build takes (part of every sweep run's cost)

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


def prepare(cfg: SuggestConfig, log: logging.Logger) -> Setup:
    """Check every input and read the data as classify does before it writes anything; build the base model."""
    from unfreeze.recipes.classify.recipe import check

    base, inputs = check(classify_config(cfg, trainable_layers="last_layer"), log)
    setup = Setup(base, inputs, None, None, 0.0)
    begin = time.perf_counter()
    setup.base_model, setup.after_head = setup.build(base.seed)
    setup.build_s = time.perf_counter() - begin
    return setup
