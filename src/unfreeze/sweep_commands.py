"""The commands a sweep can run, and the layout of their results tables.

Each entry names the command's config dataclass and run function by import path ("module:attribute"),
so nothing heavy is imported until a run starts and an entry pickles to a Ray worker by value.
`register_command` adds one (the tests register a tiny fake command this way).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Column:
    """One column of the results table: an option of the row, or a metric of its runs."""

    label: str
    key: str
    source: str  # "option" or "metric"
    format: str = "text"  # text | check | percent | minutes | float2 | float4 | float5 | int


@dataclass(frozen=True)
class Command:
    """How a sweep runs one (row, seed) of a command, and how its table looks.

    Only import paths ("module:attribute") are stored, so the entry pickles to a Ray worker by value
    and nothing heavy is imported until a run starts.
    """

    name: str
    config_class: str  # "module:Class", a dataclass accepted by config_from_mapping
    run_function: str  # "module:function", called as run(config) -> metrics dict
    main_metric: str  # the metric plotted by `unfreeze report --plot`
    columns: tuple[Column, ...]
    out_option: str = "out"  # the option that receives the run folder
    seed_option: str = "seed"
    init_option: str | None = None  # option set to the dependency's output for `init_from`
    init_subdir: str = ""  # ... namely <dependency run folder>/<init_subdir>
    init_replaces: tuple[str, ...] = ()  # options about the starting model, dropped for init_from rows
    path_options: tuple[str, ...] = ()  # options made absolute when they name an existing local path

    def load_config_class(self) -> type:
        return _import(self.config_class)

    def load_run_function(self) -> Callable[[Any], dict]:
        return _import(self.run_function)

    @property
    def metric_keys(self) -> list[str]:
        return [c.key for c in self.columns if c.source == "metric"]


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


CLASSIFY = Command(
    name="classify",
    config_class="unfreeze.tasks.classify_config:ClassifyConfig",
    run_function="unfreeze.tasks.classify:run_config",
    main_metric="test_acc",
    columns=(  # the layout of seed table 000
        Column("Model", "model_size", "option"),
        Column("Weights", "weights", "option"),
        Column("Trainable token", "trainable_token_pos", "option"),
        Column("Trainable layers", "trainable_layers", "option"),
        Column("Context length", "context_length", "option"),
        Column("Training acc", "train_acc", "metric", "percent"),
        Column("Test acc", "test_acc", "metric", "percent"),
        Column("Validation acc", "val_acc", "metric", "percent"),
        Column("Training time", "train_time_s", "metric", "minutes"),
        Column("CPU/GPU", "device", "metric"),
        Column("Trainable params", "trainable_params", "metric", "int"),
    ),
    path_options=("data", "tokenizer", "model_size"),
)

SFT = Command(
    name="sft",
    config_class="unfreeze.tasks.sft_config:SFTConfig",
    run_function="unfreeze.tasks.sft:run_config",
    main_metric="test_accuracy",
    columns=(  # the layout of seed table 003
        Column("Unfreeze Pause Embedding", "unfreeze_pause_embedding", "option", "check"),
        Column("Unfreeze Pause Head", "unfreeze_pause_head", "option", "check"),
        Column("Unfreeze LM head", "unfreeze_lm_head", "option", "check"),
        Column("Unfreeze LM Embeddings", "unfreeze_lm_embeddings", "option", "check"),
        Column("LORA", "lora", "option", "check"),
        Column("Test Accuracy", "test_accuracy", "metric", "float2"),
        Column("Eval Loss", "eval_loss", "metric", "float5"),
        Column("Trainable params", "trainable_params", "metric", "int"),
    ),
    init_option="model",
    init_subdir="final",
    init_replaces=("weights", "model_config", "tokenizer"),  # a saved model folder brings its own
    path_options=("model", "data", "test_data", "tokenizer"),
)

COMMANDS: dict[str, Command] = {c.name: c for c in (CLASSIFY, SFT)}


def register_command(command: Command) -> None:
    """Make another command available to sweep files (used by tests and plug-ins)."""
    COMMANDS[command.name] = command
