"""The `unfreeze` command and its one registry of tasks, shared with `unfreeze sweep`.

Each task is a config dataclass (its fields are the flags, see `config.py`) and a function that runs
it. The config modules are light; each recipe is imported only when its task runs (the small `run_*`
functions below), so `unfreeze --help` and the sweep's validation never wait for torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from unfreeze.config import parse_args
from unfreeze.errors import UsageError
from unfreeze.report import ReportConfig
from unfreeze.sweep.config import SweepConfig
from unfreeze.tasks.classify_config import ClassifyConfig
from unfreeze.tasks.eval_gsm8k import EvalConfig
from unfreeze.tasks.inject_pauses_config import InjectPausesConfig
from unfreeze.tasks.sft_config import SFTConfig
from unfreeze.tasks.suggest_config import SuggestConfig


@dataclass(frozen=True)
class Column:
    """One column of a task's results table: an option of the row, or a metric of its runs."""

    label: str
    key: str
    source: str  # "option" or "metric"
    format: str = "text"  # text | check | percent | minutes | float2 | float4 | float5 | int
    prefer: str | None = None  # an option shown instead of `key` when a run sets it (--model over --model_size)


@dataclass(frozen=True)
class Task:
    """A sub-command. Tasks with `columns` can also be the command of a sweep file."""

    name: str
    summary: str
    config: type
    run: Callable[[Any], Any]  # run(config) -> metrics dict (or an exit status)
    positional: tuple[str, ...] = ()  # config fields that bare words on the command line fill
    # --- how `unfreeze sweep` runs it and lays out its table -----------------------------------------
    main_metric: str | None = None  # the metric plotted by `unfreeze report --plot`
    columns: tuple[Column, ...] = ()
    out_option: str = "out"  # the option that receives the run folder
    seed_option: str = "seed"
    init_option: str | None = None  # option set to the dependency's output for `init_from`
    init_subdir: str = ""  # ... namely <dependency run folder>/<init_subdir>
    init_replaces: tuple[str, ...] = ()  # options about the starting model, dropped for init_from rows
    path_options: tuple[str, ...] = field(default=())  # made absolute when they name an existing path

    @property
    def metric_keys(self) -> list[str]:
        return [c.key for c in self.columns if c.source == "metric"]


# --- each recipe is imported when its task runs ----------------------------------------------------------


def run_classify(config: ClassifyConfig) -> dict:
    from unfreeze.tasks.classify import run_config

    return run_config(config)


def run_sft(config: SFTConfig) -> dict:
    from unfreeze.tasks.sft import run_config

    return run_config(config)


def run_eval_gsm8k(config: EvalConfig) -> int:
    from unfreeze.tasks.eval_gsm8k import run

    return run(config)


def run_inject_pauses(config: InjectPausesConfig) -> int:
    from unfreeze.tasks.inject_pauses import run

    return run(config)


def run_suggest(config: SuggestConfig) -> int:
    from unfreeze.tasks.suggest import run

    return run(config)


def run_sweep(config: SweepConfig) -> int:
    from unfreeze.sweep.runner import run

    return run(config)


def run_report(config: ReportConfig) -> int:
    from unfreeze.report import run

    return run(config)


CLASSIFY = Task(
    name="classify", summary="fine-tune a GPT-2 classifier on SMS spam (seed table 000)",
    config=ClassifyConfig, run=run_classify, main_metric="test_acc",
    columns=(  # the layout of seed table 000
        Column("Model", "model_size", "option", prefer="model"),
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
SFT = Task(
    name="sft", summary="pause-token supervised fine-tuning on GSM8K (seed table 003)",
    config=SFTConfig, run=run_sft, positional=("config",), main_metric="test_accuracy",
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
    init_option="model", init_subdir="final",
    init_replaces=("weights", "model_config", "tokenizer"),  # a saved model folder brings its own
    path_options=("model", "data", "test_data", "tokenizer"),
)
TASKS: dict[str, Task] = {task.name: task for task in (
    CLASSIFY,
    Task("inject-pauses", "write GSM8K with <|pause|> tokens injected", InjectPausesConfig, run_inject_pauses),
    SFT,
    Task("eval-gsm8k", "score a model on GSM8K test by greedy generation", EvalConfig, run_eval_gsm8k),
    Task("sweep", "run every row (and seed) of a sweep file, resumably", SweepConfig, run_sweep,
         positional=("file",)),
    Task("report", "print the results table of a sweep folder", ReportConfig, run_report, positional=("dir",)),
    Task("suggest", "which parameters to train: rank candidates at a fraction of the sweep's cost", SuggestConfig,
         run_suggest),
)}


def register_task(task: Task) -> None:
    """Add a task (tests and plug-ins); sweep files can name it if it has columns."""
    TASKS[task.name] = task


def usage() -> str:
    width = max(len(name) for name in TASKS)
    lines = ["usage: unfreeze COMMAND [options]   (unfreeze COMMAND --help for its options)", "",
             "Which parameters should I train? Run fine-tuning ablations and report the table.", "", "commands:"]
    lines += [f"  {name:<{width}}  {task.summary}" for name, task in TASKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    task = TASKS.get(name)
    if task is None:
        print(f"unfreeze: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        config = parse_args(task.config, rest, prog=f"unfreeze {name}", positional=task.positional)
        result = task.run(config)
    except UsageError as err:
        print(f"unfreeze {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unfreeze {name}: interrupted; finished results are kept, nothing half-written.", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
