"""unfreeze: which parameters should I train? Fine-tuning ablations as declared experiments.

The Python API (README, "In a notebook"): `select` a choice on your own model; run a task as a function with
its config dataclass or keyword arguments (`classify`, `sft`, `suggest`, `export_choice`), which returns a
`Result` (metrics, paths) and raises `UsageError` on bad input. Names are resolved when first used
(PEP 562), so `import unfreeze` and `unfreeze --help` do not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "select": "unfreeze.export.select",
    "Selected": "unfreeze.export.select",
    "classify": "unfreeze.api",
    "sft": "unfreeze.api",
    "suggest": "unfreeze.api",
    "export_choice": "unfreeze.api",
    "Result": "unfreeze.api",
    "UsageError": "unfreeze.errors",
    "ClassifyConfig": "unfreeze.recipes.classify.config",
    "SFTConfig": "unfreeze.recipes.sft.config",
    "SuggestConfig": "unfreeze.recipes.suggest.config",
    "ExportConfig": "unfreeze.recipes.export.config",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unfreeze' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
