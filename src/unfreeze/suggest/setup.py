"""The one place where `unfreeze suggest` reads data and builds models.

Everything goes through `unfreeze classify`'s own functions (same split, tokens, padding, model
initialisation and seeding), so a candidate trained here to the end of its epochs is the run that
`unfreeze classify` would make, on any decoder model and any labelled data classify accepts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from unfreeze.config import config_from_mapping
from unfreeze.tasks.classify_config import ClassifyConfig
from unfreeze.tasks.suggest_config import SuggestConfig

SHARED_OPTIONS = ("model_size", "weights", "model_config", "data", "tokenizer", "num_epochs", "batch_size",
                  "lr", "context_length", "lora_rank", "lora_alpha", "seed", "device", "precision",
                  "model", "text_column", "label_column", "split", "balance")


@dataclass
class Setup:
    """The inputs of every candidate: token ids and labels per split, and a model builder."""

    classify: ClassifyConfig  # the classify run that a candidate's full run is
    tokens: dict[str, list[torch.Tensor]]
    labels: dict[str, list[int]]
    max_length: int
    device: torch.device
    build: Callable[[int], torch.nn.Module]  # seed -> a fresh classifier, nothing trainable chosen yet
    build_s: float  # seconds one build takes (part of every sweep run's cost)
    base_model: torch.nn.Module  # built with the run's seed: the frozen network the cache and signals read


def classify_config(cfg: SuggestConfig, **changes) -> ClassifyConfig:
    """The classify options a candidate's full run uses (validated by classify's own parser)."""
    values = {name: getattr(cfg, name) for name in SHARED_OPTIONS}
    values.update(changes)
    return config_from_mapping(ClassifyConfig, values, "suggest's classify options")


def prepare(cfg: SuggestConfig, log: logging.Logger) -> Setup:
    """Check every input and read the data, like classify does before it writes anything."""
    import time

    from unfreeze.tasks import classify, classify_model

    base = classify_config(cfg)
    classify.validate(base)
    classify.check_downloads(base)
    inputs = classify.load_inputs(base, log)
    labels = {name: [int(v) for v in getattr(inputs.splits, name)["Label"]] for name in classify.SPLITS}
    num_classes = len(inputs.splits.class_names)

    def build(seed: int) -> torch.nn.Module:
        model = classify_model.build_model(dataclasses.replace(base, seed=seed), inputs.config,
                                           inputs.pad_token_id, num_classes)
        return model.to(inputs.device)

    begin = time.perf_counter()
    model = build(base.seed)
    return Setup(base, inputs.tokens, labels, inputs.max_length, inputs.device, build,
                 time.perf_counter() - begin, model)
