"""Typed configs that double as command-line interfaces.

A config is a plain dataclass; each field carries its help text in `metadata["help"]` (and optionally
`metadata["choices"]`). `add_dataclass_arguments` turns it into argparse flags with the *same* names,
so `--help` shows every default, and `config_from_args` turns the parsed flags back into the
dataclass. Unknown keys are errors (`config_from_mapping`), which is what sweep files and YAML
configs use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Mapping, TypeVar

from unfreeze.errors import UsageError

T = TypeVar("T")


def field(default: Any, help: str, choices: typing.Sequence[str] | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text (and choices) for the CLI."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def base_type(annotation: Any) -> Any:
    """`int | None` -> int; `str` -> str (annotations are strings under `from __future__`)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own annotations only
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--name` flag per field of `cls`, keeping the field name as the flag name."""
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        kind = base_type(f.type)
        flag = f"--{f.name}"
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        parser.add_argument(
            flag,
            type=kind if kind in (int, float) else str,
            default=f.default,
            choices=f.metadata.get("choices"),
            help=f"{help_text} (default: %(default)s)",
        )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/command-line value to the field's type, or fail naming the key."""
    kind = base_type(annotation)
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    return value


def config_from_mapping(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build `cls` from a mapping; unknown keys and bad types are `UsageError`s."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in values.items():
        f = fields[key]
        kwargs[key] = coerce(value, f.type, key)
        choices = f.metadata.get("choices")
        if choices is not None and kwargs[key] not in choices:
            raise UsageError(f"{key}={value!r} in {where} is not one of: {', '.join(map(str, choices))}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
