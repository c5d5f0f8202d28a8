"""One config system: flags, YAML, key=value and a sweep's --set fill the same dataclass through one parser."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import pytest

from unfreeze.cli import commands, main
from unfreeze.config import config_from_mapping, parse_args, parse_overrides
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
    assert "unknown key(s) --num_epoch" in capsys.readouterr().err
