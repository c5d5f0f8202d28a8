"""The registry of tasks: each sub-command's config dataclass, the function that runs it, and its table.

What the rest of the tool needs to know about a task's options is declared on the config fields
themselves (`unfreeze.config.option`: which name paths, which receives the run folder, the seed, a
dependency's output) and read from there; a table's option columns are checked against the fields when
the task is made, so neither can drift from the config. `cli.py` (the command line) and `sweep/` (sweep
files) both read this registry; it imports only the light config modules, and each recipe when its task
runs, so `unfreeze --help` and a sweep's validation never wait for torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from unfreeze.config import field_meta, fields_where
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.eval_gsm8k.config import EvalConfig
from unfreeze.recipes.export.config import ExportConfig
from unfreeze.recipes.inject_pauses.config import InjectPausesConfig
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.recipes.suggest.config import SFTSuggestConfig, SuggestConfig


@dataclass(frozen=True)
class Column:
    """One column of a task's results table: an option of the row, or a metric of its runs."""

    label: str
    key: str
    source: str  # "option" or "metric"
    format: str = "text"  # text | check | percent | minutes | float2 | float4 | float5 | int
    prefer: str | None = None  # an option shown instead of `key` when a run sets it (--model over --model_size)
    detail: str | None = None  # an option shown after the value when a run sets it (--model_config)


@dataclass(frozen=True)
class Task:
    """A sub-command. Tasks with `columns` can also be the command of a sweep file."""

    name: str
    summary: str
    config: type
    run: Callable[[Any], Any]  # run(config) -> metrics dict (or an exit status)
    positional: tuple[str, ...] = ()  # config fields that bare words on the command line fill
    main_metric: str | None = None  # the metric plotted by `unfreeze report --plot`
    columns: tuple[Column, ...] = ()
    # Everything a run checks before its work (bad values, data, model structure): `unfreeze sweep` calls it
    # for every row before its first run, so a bad row fails the sweep before anything is written.
    # check(config, model_from_dependency): the second says the model is an `init_from` row's output.
    check: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.config)}
        for column in self.columns:
            for key in (column.key, column.prefer, column.detail):
                if column.source == "option" and key is not None and key not in names:
                    raise ValueError(f"task {self.name}: column {column.label!r} names {key!r}, not an option of "
                                     f"{self.config.__name__}")
        if self.columns and (self.out_option is None or self.seed_option is None):
            raise ValueError(f"task {self.name}: a sweepable config needs option(role='out') and option(role='seed')")

    # --- read from the config's fields -------------------------------------------------------------------
    @property
    def out_option(self) -> str | None:
        """The option that receives the run folder."""
        return next(iter(fields_where(self.config, "role", "out")), None)

    @property
    def seed_option(self) -> str | None:
        return next(iter(fields_where(self.config, "role", "seed")), None)

    @property
    def path_options(self) -> tuple[str, ...]:
        """Options that name files or folders: a sweep makes them absolute."""
        return fields_where(self.config, "path")

    @property
    def init_option(self) -> str | None:
        """The option set to a dependency's output for `init_from` rows (None: no `init_from`)."""
        return next((f.name for f in dataclasses.fields(self.config)
                     if field_meta(self.config, f.name)["init_subdir"] is not None), None)

    @property
    def init_subdir(self) -> str:
        return field_meta(self.config, self.init_option)["init_subdir"] if self.init_option else ""

    @property
    def init_replaces(self) -> tuple[str, ...]:
        """Options about the starting model, dropped for `init_from` rows (the dependency brings them)."""
        return fields_where(self.config, "replaced_by_init")

    @property
    def metric_keys(self) -> list[str]:
        return [c.key for c in self.columns if c.source == "metric"]


# --- each recipe is imported when its task runs ----------------------------------------------------------


def run_classify(config: ClassifyConfig) -> dict:
    from unfreeze.recipes.classify.recipe import run

    return run(config)


def check_classify(config: ClassifyConfig, model_from_dependency: bool = False) -> None:
    from unfreeze.recipes.classify.recipe import check

    check(config)


def run_sft(config: SFTConfig) -> dict:
    from unfreeze.recipes.sft.recipe import run

    return run(config)


def check_sft(config: SFTConfig, model_from_dependency: bool = False) -> None:
    from unfreeze.recipes.sft.recipe import check

    check(config, model_from_dependency)


def run_eval_gsm8k(config: EvalConfig) -> int:
    from unfreeze.recipes.eval_gsm8k.recipe import run

    return run(config)


def run_inject_pauses(config: InjectPausesConfig) -> int:
    from unfreeze.recipes.inject_pauses.recipe import run

    return run(config)


def run_suggest(config: SuggestConfig) -> dict:
    from unfreeze.recipes.suggest.recipe import run

    return run(config)


def run_suggest_sft(config: SFTSuggestConfig) -> dict:
    from unfreeze.recipes.suggest.sft_recipe import run

    return run(config)


def run_export(config: ExportConfig) -> dict:
    from unfreeze.recipes.export.recipe import run

    return run(config)


CLASSIFY = Task(
    name="classify", summary="fine-tune a decoder model as a text classifier (seed table 000: GPT-2 on SMS spam)",
    config=ClassifyConfig, run=run_classify, check=check_classify, main_metric="test_acc",
    columns=(  # the layout of seed table 000
        Column("Model", "model_size", "option", prefer="model", detail="model_config"),
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
)
SFT = Task(
    name="sft", summary="supervised fine-tuning with a pause token (seed table 003: pause-token SFT on GSM8K)",
    config=SFTConfig, run=run_sft, check=check_sft, positional=("config",), main_metric="test_accuracy",
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
)
TASKS: dict[str, Task] = {task.name: task for task in (
    CLASSIFY,
    Task("inject-pauses", "write GSM8K with <|pause|> tokens injected", InjectPausesConfig, run_inject_pauses),
    SFT,
    Task("eval-gsm8k", "score a model on GSM8K test by greedy generation", EvalConfig, run_eval_gsm8k),
    Task("suggest", "which parameters to train: rank candidates at a fraction of the sweep's cost", SuggestConfig,
         run_suggest),
    Task("export", "write a choice for PEFT, axolotl or LLaMA-Factory, or as parameter names", ExportConfig, run_export,
         positional=("choice",)),
)}


# `unfreeze suggest --task sft CONFIG`: the same command, when a candidate's full run is an sft run.
SUGGEST_SFT = Task("suggest", "which parameters to train for sft: rank candidates by validation loss",
                   SFTSuggestConfig, run_suggest_sft, positional=("config",))


def suggest_task(argv: list[str]) -> Task:
    """`unfreeze suggest`'s task from its arguments: --task, else sft when the first argument is a YAML config (sft's
    form) or --data is a GSM8K or inject-pauses folder (train.jsonl / train.json), else classify."""
    from pathlib import Path

    def value_of(key: str) -> str | None:
        for i, arg in enumerate(argv):
            if arg in (f"--{key}",) and i + 1 < len(argv):
                return argv[i + 1]
            for prefix in (f"--{key}=", f"{key}="):
                if arg.startswith(prefix):
                    return arg[len(prefix):]
        return None

    task = value_of("task")
    if task in (None, "auto"):
        first_is_config = bool(argv) and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml"))
        data = value_of("data")
        prompt_data = data is not None and any((Path(data).expanduser() / name).is_file()
                                               for name in ("train.jsonl", "train.json"))
        task = "sft" if first_is_config or prompt_data else "classify"
    return SUGGEST_SFT if task == "sft" else TASKS["suggest"]


def register_task(task: Task) -> None:
    """Add a task (tests and plug-ins); sweep files can name it if it has columns."""
    TASKS[task.name] = task


def sweepable() -> dict[str, Task]:
    """The tasks a sweep file may name: those with a results table."""
    return {name: task for name, task in TASKS.items() if task.columns}
