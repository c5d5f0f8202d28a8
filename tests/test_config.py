"""One config system: flags, YAML, key=value and a sweep's --set fill the same dataclass through one parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from unfreeze.cli import commands, main
from unfreeze.config import JSONARGPARSE_TEXTS, config_from_mapping, parse_args, parse_overrides
from unfreeze.errors import UsageError
from unfreeze.recipes.classify.config import ClassifyConfig
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.config import SFTConfig

ROOT = Path(__file__).resolve().parents[1]


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_flags_then_key_value_later_ones_win(tmp_path):
    path = _yaml(tmp_path, "lr: 5.0e-5\nnum_epochs: 3\nprompt_column: no\n")
    config = parse_args(SFTConfig, [str(path), "--lr", "1e-3", "num_epochs=2"], "unfreeze sft", positional=("config",))
    assert (config.lr, config.num_epochs, config.prompt_column) == (1e-3, 2, "no")  # YAML `no` stays text
    # a key=value before the file still overrides it: the file is always read first
    config = parse_args(SFTConfig, ["lr=2e-3", str(path)], "unfreeze sft", positional=("config",))
    assert config.lr == 2e-3


@pytest.mark.parametrize("argv,expected", [
    (["--detach_head", "false"], False), (["detach_head=no"], False), (["--detach_head=False"], False),
    (["--detach_head"], True), (["detach_head=true"], True), ([], True),
])
def test_a_bool_that_defaults_to_true_can_be_switched_off(argv, expected):
    assert parse_args(SFTConfig, argv, "unfreeze sft").detach_head is expected


def test_the_reference_flags_of_classify_work_verbatim():
    config = parse_args(ClassifyConfig, ["--average_embeddings", "--trainable_token_pos", "flexible",
                                         "--disable_causal_mask", "--context_length", "model_context_length",
                                         "--model_size", "gpt2-medium (355M)", "--no_padding"], "unfreeze classify")
    assert (config.average_embeddings, config.disable_causal_mask, config.no_padding) == (True, True, True)
    assert (config.trainable_token_pos, config.context_length) == ("flexible", "model_context_length")
    assert config.model_size == "gpt2-medium (355M)"


def test_every_shipped_pause_config_loads(tmp_path):
    files = sorted((ROOT / "experiments" / "pause").glob("*.yaml"))
    assert len(files) >= 20
    for path in files:
        config = load_config(str(path), ["lr=1e-3"], out=str(tmp_path))
        assert config.lr == 1e-3 and config.out == str(tmp_path)


@pytest.mark.parametrize("argv", [
    ["sft", "{sft}", "--bogus", "1"], ["sft", "{sft}", "bogus=1"], ["sft", "{bad_yaml}"],
    ["classify", "--bogus", "1"], ["sweep", "{sweep}", "--set", "bogus=1"], ["sweep", "{bad_row}"],
])
def test_an_unknown_key_anywhere_is_one_line_exit_2_naming_it(tmp_path, capsys, argv):
    files = {
        "sft": ROOT / "experiments" / "pause" / "sft.yaml",
        "bad_yaml": _yaml(tmp_path, "lr: 1.0e-3\nbogus: 2\n"),
        "sweep": ROOT / "experiments" / "spam_additional.yaml",
        "bad_row": tmp_path / "bad_row.yaml",
    }
    files["bad_row"].write_text("command: classify\nrows:\n  - {name: a, options: {bogus: 1}}\n", encoding="utf-8")
    argv = [a.format(**files) for a in argv] + (["--out", str(tmp_path / "out")] if argv[0] != "classify" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err and "unknown key" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "runs").exists()


def test_a_bad_value_reads_the_same_from_flags_yaml_and_sweep_set(tmp_path, capsys):
    messages = []
    assert main(["sft", str(ROOT / "experiments/pause/sft.yaml"), "--lr", "fast", "--out", str(tmp_path)]) == 2
    messages.append(capsys.readouterr().err)
    assert main(["sft", str(_yaml(tmp_path, "lr: fast\n")), "--out", str(tmp_path)]) == 2
    messages.append(capsys.readouterr().err)
    assert main(["sweep", str(ROOT / "experiments/pause_warmup.yaml"), "--set", "lr=fast",
                 "--out", str(tmp_path / "sw")]) == 2
    messages.append(capsys.readouterr().err)
    assert all("lr='fast' is not a valid float" in m for m in messages), messages


def test_sweep_set_values_are_typed_by_the_commands_parser():
    assert parse_overrides(SFTConfig, ["lr=1e-3", "lora=yes", "prompt_column=no", "train_limit=null"]) == {
        "lr": 1e-3, "lora": True, "prompt_column": "no", "train_limit": None}
    assert parse_overrides(SFTConfig, ["lora_r=4"]) == {"lora_rank": 4}  # the reference's name, read as ours
    with pytest.raises(UsageError, match="num_epochs='two' is not a valid int"):
        parse_overrides(ClassifyConfig, ["num_epochs=two"])


def test_mappings_are_checked_like_flags():
    assert config_from_mapping(ClassifyConfig, {"num_epochs": 2, "average_embeddings": True}).num_epochs == 2
    with pytest.raises(UsageError, match="trainable_layers='middle' in row x: invalid choice"):
        config_from_mapping(ClassifyConfig, {"trainable_layers": "middle"}, "row x")


def test_every_task_has_help_text_for_every_key(capsys):
    for name, task in commands().items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for field in dataclasses.fields(task.config):
            assert f"--{field.name}" in text, (name, field.name)
    assert "(type: int, default: 5)" in _help("classify", capsys)  # defaults are visible


def _help(name: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([name, "--help"])
    return capsys.readouterr().out


def test_an_abbreviated_key_is_not_guessed(capsys):
    assert main(["classify", "--num_epoch", "2"]) == 2  # not silently read as --num_epochs
    err = capsys.readouterr().err
    assert "unknown key --num_epoch;" in err and "did you mean num_epochs?" in err


# --- union-typed keys read like every other key (issue 22, item 8) ---------------------------------------


@pytest.mark.parametrize("cls,argv,expected", [
    (SFTConfig, ["precision=fp33"], "precision='fp33': invalid choice, not one of: fp32, bf16-mixed, bf16-pure"),
    (SFTConfig, ["resume=maybe"], "resume='maybe' is not a valid bool; use true or false (or null for"),
    (ClassifyConfig, ["--balance", "maybe"], "balance='maybe' is not a valid bool; use true or false (or null for"),
    (ClassifyConfig, ["--trainable_layers", "blocks:"], "trainable_layers='blocks:': invalid choice, not one of: last"),
    (ClassifyConfig, ["--cache_budget_gb", "lots"], "cache_budget_gb='lots' is not a valid float; use a number"),
    (SFTConfig, ["train_limit=two"], "train_limit='two' is not a valid int; use a whole number (or null for the"),
    (ClassifyConfig, ["--precision", "fp33"], "precision='fp33': invalid choice, not one of: fp32, bf16-mixed, bf16"),
])
def test_a_bad_value_of_any_type_is_one_plain_line_naming_key_value_and_choices(cls, argv, expected):
    with pytest.raises(UsageError) as raised:
        parse_args(cls, argv, "unfreeze")
    message = str(raised.value)
    assert expected in message and "\n" not in message, message
    for internal in ("Union", "Subtypes", "Parser key", "Not of type", "<class", "typing."):
        assert internal not in message, message


def test_union_typed_keys_read_the_same_from_flags_yaml_rows_and_sweep_set(tmp_path, capsys):
    assert main(["classify", "--balance", "maybe"]) == 2
    assert main(["classify", "--config", str(_yaml(tmp_path, "balance: maybe\n"))]) == 2
    assert main(["sweep", str(ROOT / "experiments/spam_additional.yaml"), "--set", "balance=maybe",
                 "--out", str(tmp_path / "sw")]) == 2
    messages = capsys.readouterr().err.strip().splitlines()
    assert len(messages) == 3 and all("balance='maybe' is not a valid bool" in m for m in messages), messages
    assert "(with --set); use true or false" in messages[2]
    with pytest.raises(UsageError, match=r"precision='fp33' in row x: invalid choice, not one of: fp32, bf16-mixed"):
        config_from_mapping(SFTConfig, {"precision": "fp33"}, "row x")
    assert not (tmp_path / "sw").exists()


# --- the jsonargparse texts that config.py reads (issue 21, item 7) --------------------------------------
# jsonargparse reports bad input as text only; config.py takes the key and the value from that text. Each
# test below makes the error with jsonargparse itself (not through config.py), so an upgrade that changes
# a text fails here, by name, instead of letting a multi-line message reach the user.


class Shade(str):
    """A registered type whose deserializer explains itself, as classify's TrainableLayers does."""


def _shade(value) -> Shade:
    if value not in ("light", "dark"):
        raise ValueError(f"{str(value)!r}: not a shade")
    return Shade(value)


@dataclasses.dataclass
class Pinned:
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    count: int = 1
    shade: Shade = Shade("light")


def _jsonargparse_text(argv=None, mapping=None) -> str:
    from jsonargparse import ArgumentParser
    from jsonargparse.typing import register_type

    register_type(Shade, serializer=str, deserializer=_shade)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Pinned, nested_key=None, as_group=False)
    parser.add_argument("--config", action="config")
    with pytest.raises(Exception) as raised:
        parser.parse_object(mapping) if mapping is not None else parser.parse_args(argv)
    return " ".join(part.strip() for part in str(raised.value).splitlines() if part.strip())


def _pinned(name: str, text: str) -> dict:
    match = JSONARGPARSE_TEXTS[name].search(text)
    assert match, f"jsonargparse's text changed ({name}): {text!r}; update unfreeze.config.JSONARGPARSE_TEXTS"
    return match.groupdict()


def test_jsonargparse_text_of_an_unknown_flag():
    assert _pinned("unrecognized", _jsonargparse_text(["--bogus", "1"])) == {"key": "--bogus"}


def test_jsonargparse_text_of_an_unknown_mapping_key():
    assert _pinned("not_accepted", _jsonargparse_text(mapping={"bogus": 1})) == {"key": "bogus"}


def test_jsonargparse_text_of_a_missing_config_file(tmp_path):
    path = tmp_path / "gone.yaml"
    assert _pinned("missing_config", _jsonargparse_text(["--config", str(path)])) == {"path": f"'{path}'"}


def test_jsonargparse_text_names_the_key_of_a_bad_value():
    assert _pinned("parser_key", _jsonargparse_text(["--count", "x"])) == {"key": "count"}
    assert _pinned("parser_key", _jsonargparse_text(["--limit", "x"])) == {"key": "limit"}  # a union too


def test_jsonargparse_text_of_a_registered_types_own_message():
    assert _pinned("custom_type", _jsonargparse_text(["--shade", "grey"])) == {"why": "'grey': not a shade"}


@pytest.mark.parametrize("argv", [["--count", "x"], ["--mode", "x"], ["--limit", "x"]])  # plain, Literal, union
def test_jsonargparse_text_gives_the_value_as_it_read_it(argv):
    assert _pinned("value", _jsonargparse_text(argv)) == {"value": "x"}


def test_a_registered_types_bad_value_from_a_yaml_file_is_named_as_written(tmp_path):
    with pytest.raises(UsageError, match=r"^trainable_layers='middle': invalid choice, not one of: last_layer"):
        parse_args(ClassifyConfig, ["--config", str(_yaml(tmp_path, "trainable_layers: middle\n"))], "unfreeze")
