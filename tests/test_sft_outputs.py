"""`unfreeze sft` never loses a finished run and never leaves a model folder a loader would misread."""

from __future__ import annotations

import json

import pytest
from pause_helpers import PAUSE, tiny_model
from test_sft import _tiny_config

from unfreeze.cli import main
from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import MARKER_FILE, TENSORS_FILE, ControlTokenLM


def _interrupt_tokenizer_save(model: ControlTokenLM, monkeypatch) -> None:
    """A kill while the folder is written: the tokenizer files (written after the weights) never come."""
    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(model.tokenizer, "save_pretrained", killed)


def test_a_save_killed_midway_leaves_no_folder_a_loader_accepts(tmp_path, monkeypatch):
    model = tiny_model()
    _interrupt_tokenizer_save(model, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "final")
    assert not (tmp_path / "final").exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_a_save_killed_while_replacing_keeps_the_previous_model_whole(tmp_path, monkeypatch):
    first = tiny_model(seed=0)
    first.save_pretrained(tmp_path / "final")
    second = tiny_model(seed=1)
    _interrupt_tokenizer_save(second, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        second.save_pretrained(tmp_path / "final")
    loaded = ControlTokenLM.from_pretrained(str(tmp_path / "final"))
    assert loaded.control_tokens == [PAUSE]
    assert loaded.pause_head.weight.equal(first.pause_head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_eval_gsm8k_on_an_incomplete_model_folder_is_exit_2(tmp_path, capsys):
    folder = tmp_path / "final"
    tiny_model().save_pretrained(folder)
    (folder / MARKER_FILE).unlink()  # what a save without staging left when killed before its last file
    capsys.readouterr()  # (the save's progress bar)
    questions = tmp_path / "test.jsonl"
    questions.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n", encoding="utf-8")
    assert main(["eval-gsm8k", "--model", str(folder), "--data", str(questions), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "incomplete" in err and TENSORS_FILE in err and "Traceback" not in err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_rerunning_into_a_finished_out_keeps_metrics_unless_overwrite(tmp_path, pause_data, capsys):
    out = tmp_path / "run"
    config = str(_tiny_config(tmp_path, pause_data, num_epochs=1))
    assert main(["sft", config, "--out", str(out)]) == 0
    before = (out / "metrics.json").read_bytes()
    model_before = (out / "final" / TENSORS_FILE).read_bytes()

    for extra in ([], ["lr=-1"], ["overwrite=true", "lr=-1"], ["bogus=1"]):  # valid, or failing on bad input
        capsys.readouterr()
        assert main(["sft", config, *extra, "--out", str(out)]) == 2, extra
        assert (out / "metrics.json").read_bytes() == before, extra
        assert (out / "final" / TENSORS_FILE).read_bytes() == model_before, extra

    assert main(["sft", config, "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["sft", config, "seed=7", "--overwrite", "--out", str(out)]) == 0
    assert (out / "metrics.json").read_bytes() != before
    assert json.loads((out / "config.json").read_text())["seed"] == 7


def test_a_failed_sft_run_records_its_error_in_run_log(tmp_path, pause_data, monkeypatch):
    from unfreeze.recipes.sft import recipe as sft

    def broken_training(*_args, **_kwargs):
        raise RuntimeError("the optimizer exploded")

    monkeypatch.setattr(sft.SFTTraining, "advance", broken_training)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        sft.run(sft.load_config(str(_tiny_config(tmp_path, pause_data)), out=str(out)))
    assert "the optimizer exploded" in (out / "run.log").read_text()
    assert not (out / "metrics.json").exists()


def test_negative_learning_rate_is_a_usage_error(tmp_path, pause_data):
    from unfreeze.recipes.sft import recipe as sft

    with pytest.raises(UsageError, match="lr"):
        sft.run(sft.load_config(str(_tiny_config(tmp_path, pause_data)), ["lr=-1"], out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
