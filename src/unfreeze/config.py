"""One config system for every command: a typed dataclass, filled by jsonargparse.

Each command declares one dataclass. Its fields are the keys, their types are checked, and the
docstring under each field is its `--help` text (litgpt's style). The same dataclass is filled from

* flags:                 `unfreeze classify --num_epochs 3 --average_embeddings`
* a YAML file:           `unfreeze sft experiments/pause/sft.yaml` (also `--config FILE`)
* `key=value` overrides: `unfreeze sft sft.yaml lr=1e-3` (the same as `--lr 1e-3`)
* a sweep's rows and `--set key=value` (`config_from_mapping`, `parse_overrides`)

and always by the same jsonargparse parser, so an unknown key or a wrong type gives the same one-line
error (exit 2) wherever it was written. Booleans take a value or none: `--flag`, `--flag false`,
`flag=no`. Why jsonargparse: it builds the CLI from the dataclass itself (types, defaults, docstrings),
reads YAML into the same parser, and is what litgpt and LightningCLI use; OmegaConf would type-check
YAML but leave the command line to hand-written argparse.

YAML is read with the YAML 1.2 notion of booleans (only true/false), so `mixed_precision: no` stays
the text "no" instead of YAML 1.1's False.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from jsonargparse import ArgumentParser, Namespace, set_loader, set_parsing_settings

from unfreeze.errors import UsageError

T = TypeVar("T")
BOOL_WORDS = {"true", "false", "yes", "no"}
KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)

set_parsing_settings(docstring_parse_attribute_docstrings=True)


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose booleans are only true/false (YAML 1.2), never yes/no/on/off."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def _load_value(text: str) -> Any:
    """How jsonargparse reads a flag's value: YAML where it parses (`null`, `1e-4`), else the text itself
    (`--model_config '{not json'` reaches the recipe, which names the flag)."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


set_loader("yaml", _load_value)


# --- the parser of a config dataclass --------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _help_texts(cls: type) -> dict[str, str]:
    """Each field's docstring, the base classes' included (a subclass's own win)."""
    import docstring_parser

    texts: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        texts.update({p.arg_name: (p.description or "") for p in docstring_parser.parse_from_object(klass).params})
    return texts


# --- names kept for compatibility ------------------------------------------------------------------------
#
# One idea has one name across the tasks (lora_rank, accumulation_steps, eval_every, precision). A config
# class may still accept other names for some of its keys -- the reference's, where a seed's command line
# or config files use them -- in a class attribute `ALIASES = {"old": "new"}`: wherever a key is written
# (flag, key=value, YAML file, sweep row, --set), the old name is read as the new one.


def aliases(cls: type) -> dict[str, str]:
    return dict(getattr(cls, "ALIASES", {}))


def _canonical(cls: type, key: str) -> str:
    """The option's one name; a retired key is a UsageError saying what replaced it."""
    retired = getattr(cls, "RETIRED", {})
    if key in retired:
        raise UsageError(retired[key])
    return aliases(cls).get(key, key)


def canonical_mapping(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` with every alias renamed; an option given under both names is a UsageError."""
    renamed: dict[str, Any] = {}
    given: dict[str, str] = {}  # canonical name -> the name it was given under
    for key, value in values.items():
        name = _canonical(cls, key)
        if name in renamed:
            first, second = sorted((given[name], key), key=lambda k: k == name)
            raise UsageError(f"{first} and {second} in {where} are the same option; keep one ({name})")
        renamed[name], given[name] = value, key
    return renamed


_PARSERS: dict[tuple[type, str], ArgumentParser] = {}


def parser_for(cls: type, prog: str = "unfreeze", description: str | None = None) -> ArgumentParser:
    """The jsonargparse parser of `cls`: one `--key` per field, plus `--config FILE`."""
    cached = _PARSERS.get((cls, prog))
    if cached is not None:
        return cached
    parser = ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                            exit_on_error=False, default_env=False, allow_abbrev=False)
    types = _field_types(cls)
    flags = [f.name for f in dataclasses.fields(cls) if types[f.name] is bool]
    parser.add_class_arguments(cls, nested_key=None, skip=set(flags), as_group=False, fail_untyped=True)
    helps = _help_texts(cls)
    for f in dataclasses.fields(cls):
        if f.name in flags:  # `--flag` alone means true; `--flag false` / `flag=no` switch it off
            parser.add_argument(f"--{f.name}", type=bool, nargs="?", const=True, default=f.default,
                                help=f"{helps.get(f.name, '')} (default: {f.default})")
    parser.add_argument("--config", action="config",
                        help="YAML file of these keys; flags after it override it")
    _PARSERS[(cls, prog)] = parser
    return parser


def _unknown_key(cls: type, key: str, place: str = "") -> str:
    """The line for a key `cls` has no field for: the nearest names when the key looks misspelt, else all of them.

    Listing every key of a forty-field config buries the fix, so a close match is offered alone.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key.lstrip("-").replace("-", "_"), names, n=3, cutoff=0.6)
    if close:
        return f"unknown key {key}{place}; did you mean {' or '.join(close)}?"
    return f"unknown key {key}{place}; valid keys: {', '.join(names)}"


# jsonargparse (4.53) reports bad input as text only, no structured error; these are the pieces of that text
# the messages are rebuilt from. tests/test_config.py pins each against jsonargparse itself, so an upgrade that
# changes one fails there instead of letting its multi-line text through.
JSONARGPARSE_TEXTS = {
    "unrecognized": re.compile(r"unrecognized arguments: (?P<key>\S+)"),  # a flag (parse_args)
    "not_accepted": re.compile(r"Option '(?P<key>[^']+)' is not accepted"),  # a mapping's key (parse_object)
    "missing_config": re.compile(r'Parser key "config": File does not exist: (?P<path>.*)$'),
    "parser_key": re.compile(r'Parser key "(?P<key>[^"]+)":'),  # which key a bad value belongs to
    "custom_type": re.compile(r"Not of type \w+: (?P<why>.*)$"),  # a registered type's own ValueError text
    "value": re.compile(r"(?:Got|Given) value: (?P<value>.*)$"),  # the value, as jsonargparse read it
}
_NOT_GIVEN = object()


def _one_line(err: BaseException, cls: type, where: str | None = None, given: Mapping[str, Any] | None = None) -> str:
    """jsonargparse's multi-line messages as one line that names the key, the value and the valid values.

    Only the key and the value are taken from jsonargparse's text; what is valid comes from the field's type.
    `given`: the values as the user wrote them, by key (jsonargparse shows some after YAML parsing, e.g.
    `blocks:` as a mapping).
    """
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    place = f" in {where}" if where else ""
    found = {name: pattern.search(text) for name, pattern in JSONARGPARSE_TEXTS.items()}
    unknown = found["unrecognized"] or found["not_accepted"]
    if unknown:
        key = unknown.group("key").split("=", 1)[0]
        return _unknown_key(cls, key, place)
    if found["missing_config"]:
        return f"config file {found['missing_config'].group('path')} does not exist"
    key = found["parser_key"].group("key") if found["parser_key"] else None
    if key is None or key not in _field_types(cls):
        return text + place
    value = (given or {}).get(key, _NOT_GIVEN)
    if found["custom_type"]:  # our deserializers' messages start with the value they saw, then say why
        seen, why = _value_and_reason(found["custom_type"].group("why"))
        return f"{key}={seen if value is _NOT_GIVEN else value!r}{place}: {why}"
    if value is _NOT_GIVEN:
        value = found["value"].group("value") if found["value"] else None
    return _bad_value(cls, key, value, place)


def _value_and_reason(text: str) -> tuple[str | None, str]:
    """`'middle': invalid choice ...` -> ("middle", "invalid choice ..."); without the value -> (None, text)."""
    match = re.fullmatch(r"""(['"])(?P<value>.*?)\1: (?P<why>.*)""", text)
    return (match.group("value"), match.group("why")) if match else (None, text)


_VALID = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}


def _bad_value(cls: type, key: str, value: Any, place: str) -> str:
    """`key=value` is not of the field's type: say which values it takes (null too, where the type allows it)."""
    field_type = _field_types(cls)[key]
    union = typing.get_origin(field_type) in (typing.Union, types.UnionType)
    members = typing.get_args(field_type) if union else (field_type,)
    options = [member for member in members if member is not type(None)]
    default = {f.name: f.default for f in dataclasses.fields(cls)}.get(key)
    nullable = len(options) < len(members)
    null = (" (or null for the default)" if default is None else " (or null)") if nullable else ""
    if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
        choices = ", ".join(str(choice) for choice in typing.get_args(options[0]))
        return f"{key}={value!r}{place}: invalid choice, not one of: {choices}{null}"
    said = [_VALID.get(option, getattr(option, "__name__", str(option))) for option in options]
    kinds = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    return f"{key}={value!r} is not a valid {kinds}{place}; use {' or '.join(said)}{null}"


def _raw_values(argv: Sequence[str]) -> dict[str, str]:
    """The value of each `--key value` / `--key=value` in a normalised argv, as typed (the last one wins)."""
    values: dict[str, str] = {}
    for index, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, equals, value = token[2:].partition("=")
        name = name.rstrip("+").replace("-", "_")
        if equals:
            values[name] = value
        elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            values[name] = argv[index + 1]
    return values


def _to_config(cls: type[T], namespace: Namespace) -> T:
    values = namespace.as_dict()
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


# --- filling a config ------------------------------------------------------------------------------


def normalize_argv(cls: type, argv: Sequence[str], positional: Sequence[str] = ()) -> list[str]:
    """`key=value` -> `--key=value`; bare words fill `positional` fields in order (a field named
    `config` is the YAML file); a repeated list flag appends (`--set a --set b`)."""
    types = _field_types(cls)
    lists = {n for n, t in types.items() if typing.get_origin(t) is list}
    flags = {n for n, t in types.items() if t is bool}
    out: list[str] = []
    front: list[str] = []  # a YAML file named by a bare word is read first: every other key overrides it
    pending = list(positional)
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-"):
            name = _canonical(cls, token.lstrip("-").split("=", 1)[0].replace("-", "_"))
            token = f"--{name}{token[len(token.split('=', 1)[0]):]}" if token.startswith("--") else token
            out.append(f"--{name}+{token[len(token.split('=', 1)[0]):]}" if name in lists else token)
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if name in flags:  # `--flag` alone, or `--flag false`
                takes_value = "=" not in token and str(following).lower() in BOOL_WORDS
            else:
                takes_value = "=" not in token and name not in ("help", "h", "print_config")
            if takes_value and following is not None:
                out.append(tokens[i + 1])
                i += 1
        elif match := KEY_VALUE.match(token):  # an unknown key is named by the parser
            out.append(f"--{_canonical(cls, match.group(1))}={match.group(2)}")
        elif pending:
            name = pending.pop(0)
            (front if name == "config" else out).extend([f"--{name}", token])
        else:
            raise UsageError(f"unexpected argument {token!r}: it is not key=value (options: --key value, key=value)")
        i += 1
    return front + out


def parse_args(cls: type[T], argv: Sequence[str], prog: str, positional: Sequence[str] = (),
               description: str | None = None) -> T:
    """Flags, `--config FILE` / a positional YAML file, and `key=value` -> `cls` (UsageError on bad input)."""
    parser = parser_for(cls, prog, description)
    argv = normalize_argv(cls, argv, positional)
    for index, flag in enumerate(argv[:-1]):
        if flag == "--config":
            argv[index + 1] = _config_file(cls, argv[index + 1])
    try:
        return _to_config(cls, parser.parse_args(argv))
    except UsageError:
        raise
    except Exception as err:  # jsonargparse's ArgumentError/TypeError/ValueError: the user's input
        raise UsageError(_one_line(err, cls, given=_raw_values(argv))) from None


def _config_file(cls: type, path: str) -> str:
    """A config file for jsonargparse: one that is not a YAML mapping is named here first; one that uses
    alias names is handed over as YAML text with the names made canonical (jsonargparse reads either)."""
    try:
        data = load_yaml(open(path, encoding="utf-8").read())
    except OSError:
        return path  # jsonargparse says that it does not exist
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of keys to values")
    if not set(data) & {*aliases(cls), *getattr(cls, "RETIRED", {})}:
        return path
    return yaml.safe_dump(canonical_mapping(cls, data, f"config file {path}"), sort_keys=False)


def config_from_mapping(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """`cls` from a mapping (YAML rows, sweep settings); unknown keys and bad types are UsageErrors."""
    parser = parser_for(cls)
    values = canonical_mapping(cls, values, where)
    try:
        return _to_config(cls, parser.parse_object(values))
    except Exception as err:  # noqa: BLE001 - see parse_args
        raise UsageError(_one_line(err, cls, where, given=values)) from None


def parse_overrides(cls: type, items: Sequence[str], where: str = "the overrides") -> dict[str, Any]:
    """`key=value` texts -> typed values, each read by the same parser as a `--key=value` flag."""
    parser = parser_for(cls)
    values: dict[str, Any] = {}
    for item in items:
        match = KEY_VALUE.match(item)
        if not match:
            raise UsageError(f"{item!r} in {where}: expected key=value, e.g. num_epochs=1")
        key, text = match.groups()
        key = _canonical(cls, key)
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise UsageError(_unknown_key(cls, key, f" in {where}"))
        try:
            values[key] = parser.parse_args(normalize_argv(cls, [f"{key}={text}"]))[key]
        except Exception as err:  # noqa: BLE001 - see parse_args
            raise UsageError(_one_line(err, cls, where, given={key: text})) from None
    return values


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# --- what a field means to the rest of the tool, declared on the field itself --------------------------
#
# `unfreeze sweep` must know which options name files (made absolute, so a run does not depend on the
# directory it is started from), which one receives the run folder and which the seed, and which option an
# `init_from` row's dependency fills. Declaring that on the field (`option(...)`) instead of in a list of
# names elsewhere means a new path option cannot miss its path handling: the registry reads it from here.

_META = "unfreeze"


def option(default: Any = dataclasses.MISSING, *, path: bool = False, role: str | None = None,
           init_subdir: str | None = None, replaced_by_init: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with the tool's metadata.

    path: the value names a file or folder (sweeps make it absolute when it exists);
    role: "out" (the run folder) or "seed" (the run's seed), set by the sweep for every run;
    init_subdir: this option takes a dependency's output (`init_from`), namely `<run folder>/<init_subdir>`;
    replaced_by_init: dropped for `init_from` rows (the dependency's output brings it).
    """
    meta = {"path": path, "role": role, "init_subdir": init_subdir, "replaced_by_init": replaced_by_init}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The tool's metadata of field `name` of `cls` (all off for a plain field)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(_META, {"path": False, "role": None, "init_subdir": None, "replaced_by_init": False})
    raise KeyError(name)


def fields_where(cls: type, key: str, value: Any = True) -> tuple[str, ...]:
    """Names of the fields of `cls` whose metadata `key` equals `value` (e.g. every path option)."""
    return tuple(f.name for f in dataclasses.fields(cls) if field_meta(cls, f.name).get(key) == value)
