"""The tasks as Python functions (re-exported from `unfreeze`): the command line's configs, results as objects.

    result = unfreeze.classify(trainable_layers="last_blocks:4", data="tickets.csv", out="runs/t")
    result.metrics["test_acc"], result.final          # <out>/final: AutoModelForSequenceClassification

Each function takes its config dataclass, keyword options, or both (the keywords override the config's fields),
checks them with the command line's parser (a wrong key or type is a UsageError naming it) and runs the task
from the registry -- exactly what `unfreeze TASK` runs. Bad input raises `UsageError` (one line, nothing
written) instead of exiting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unfreeze.config import config_from_mapping
from unfreeze.errors import UsageError
from unfreeze.registry import TASKS


@dataclass
class Result:
    """What a task returned: its metrics (metrics.json's content, suggestion.json's for suggest) and its paths."""

    task: str
    metrics: dict
    out: Path | None = None
    export: Path | None = None

    @property
    def final(self) -> Path | None:
        """The saved model (`<out>/final`), when the task saved one."""
        folder = self.out / "final" if self.out is not None else None
        return folder if folder is not None and folder.is_dir() else None

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]


def _config(task: str, config: Any, options: dict, cls: type | None = None) -> Any:
    cls = cls or TASKS[task].config
    if config is not None and not isinstance(config, cls):
        raise UsageError(f"unfreeze.{task.replace('-', '_')}: expected a {cls.__name__}, got {type(config).__name__}")
    values = {} if config is None else {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
    return config_from_mapping(cls, {**values, **options}, where=f"unfreeze.{task}(...)")


def _run(task: str, config: Any, options: dict, chosen: Any = None) -> Result:
    """Run `task` (or the `chosen` form of it: suggest's sft form) with a config and/or options."""
    chosen = chosen or TASKS[task]
    cfg = _config(task, config, options, chosen.config)
    result = chosen.run(cfg)
    metrics = result if isinstance(result, dict) else {}
    out = getattr(cfg, "out", None)
    export = getattr(cfg, "export", None)
    return Result(task, metrics, Path(out) if out else None, Path(export) if export else None)


def classify(config: Any = None, /, **options: Any) -> Result:
    """`unfreeze classify`: a ClassifyConfig and/or its options as keywords."""
    return _run("classify", config, options)


def sft(config: Any = None, /, **options: Any) -> Result:
    """`unfreeze sft`: an SFTConfig, or a YAML file's path (read first, as `unfreeze sft FILE`), and/or keys as
    keywords."""
    if isinstance(config, (str, Path)):
        from unfreeze.recipes.sft.recipe import load_config

        config = load_config(str(config))
    return _run("sft", config, options)


def suggest(config: Any = None, /, **options: Any) -> Result:
    """`unfreeze suggest`: a SuggestConfig and/or its options; for sft candidates an SFTSuggestConfig, an sft YAML
    file's path (read first, as `unfreeze suggest FILE`) or task="sft". `metrics` is suggestion.json (pick,
    candidates)."""
    from unfreeze.recipes.suggest.config import SFTSuggestConfig
    from unfreeze.registry import SUGGEST_SFT

    if isinstance(config, (str, Path)):
        from unfreeze.config import parse_args

        config = parse_args(SFTSuggestConfig, [str(config)], "unfreeze suggest", positional=("config",))
    sft = isinstance(config, SFTSuggestConfig) or options.get("task") == "sft"
    return _run("suggest", config, options, SUGGEST_SFT if sft else None)


def export_choice(config: Any = None, /, **options: Any) -> Result:
    """`unfreeze export`: an ExportConfig and/or its options; `metrics["text"]` is what was written."""
    return _run("export", config, options)
