"""`unfreeze suggest --task sft`: candidates are sft runs, ranked by validation loss under successive halving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pause_helpers import GSM8K, PAUSE, save_tiny_tokenizer, toy_rows
from unfreeze.cli import main as cli_main
from unfreeze.config import parse_args
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest import halving
from unfreeze.recipes.suggest.config import SFTSuggestConfig
from unfreeze.registry import SUGGEST_SFT, TASKS, suggest_task

TINY = {"n_layer": 3, "n_embd": 32, "n_head": 2}


def _config(tmp_path: Path, data: Path, **overrides) -> Path:
    """A tiny random GPT-2 sft config; its dropout (GPT-2's 0.1) makes the runs draw random numbers every step."""
    tokenizer = tmp_path / "tok"
    if not tokenizer.exists():
        save_tiny_tokenizer(tokenizer)
    values = {"model": "gpt2", "weights": "random", "model_config": json.dumps(TINY), "tokenizer": str(tokenizer),
              "data": str(data), "pause_token": PAUSE, "batch_size": 4, "lr": 1e-2, "eval_every": 3,
              "log_every": 2, "max_length": 128, "report_to": "none", "num_epochs": 2, "dropout": 0.2}
    values.update(overrides)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- halving over sft candidates (scripted) ------------------------------------------------------------


class ScriptedSFTArm:
    """A candidate whose validation loss after n steps is `curve(n)`; scored as SFTArm scores: (-loss, loss)."""

    def __init__(self, name, curve, total=16, step_s=1.0):
        self.name, self.curve, self.total_steps, self.steps_done, self._step_s = name, curve, total, 0, step_s

    def advance(self, steps):
        self.steps_done = min(self.steps_done + steps, self.total_steps)

    def evaluate(self):
        loss = self.curve(self.steps_done)
        return -loss, loss

    def step_cost(self):
        return self._step_s

    def eval_cost(self):
        return 0.1


def test_halving_over_sft_candidates_keeps_the_lowest_loss():
    """The candidate that ends lowest survives, though another starts lower (a slow starter wins on loss)."""
    arms = [ScriptedSFTArm("fast_start", lambda n: 2.0 - 0.02 * n),
            ScriptedSFTArm("slow_start", lambda n: 2.2 - 0.1 * n),
            ScriptedSFTArm("flat", lambda n: 2.5),
            ScriptedSFTArm("worse", lambda n: 3.0 - 0.01 * n)]
    result = halving.successive_halving(arms, 60.0, 2)
    assert result.survivors == ["slow_start"]
    first = result.rungs[0]
    assert set(first.kept) == {"fast_start", "slow_start"}  # the two lowest losses after the first round
    assert all(first.scores[name][0] == -first.scores[name][1] for name in first.scores)


# --- candidates ------------------------------------------------------------------------------------------


def test_candidates_words_switches_and_the_pause_table():
    assert cand.split_sft_candidate("pause_embedding+lm_head+peft") == (
        {"unfreeze_pause_embedding": True, "unfreeze_pause_head": False, "unfreeze_lm_head": True,
         "unfreeze_lm_embeddings": False, "lora": True}, None)
    assert cand.split_sft_candidate("mlp:last_blocks:4+new_tokens")[1] == "mlp:last_blocks:4+new_tokens"
    table = cand.pause_table()
    assert len(table) == 18 and len(set(table)) == 18
    assert table[0] == "pause_embedding+pause_head" and table[-1] == "pause_head+lm_head+lm_embeddings+peft"
    assert cand.parse_sft_candidates("blocks:0,2,norms") == ["blocks:0,2", "norms"]
    with pytest.raises(Exception, match="--candidates"):
        cand.parse_sft_candidates("last_layer,not_a_word")


def test_the_task_comes_from_the_flag_or_the_arguments(tmp_path):
    (tmp_path / "gsm").mkdir()
    (tmp_path / "gsm" / "train.jsonl").write_text("")
    assert suggest_task(["--task", "sft"]) is SUGGEST_SFT
    assert suggest_task(["cfg.yaml", "--budget", "0.1"]) is SUGGEST_SFT
    assert suggest_task(["--data", str(tmp_path / "gsm")]) is SUGGEST_SFT
    assert suggest_task(["--data", "sms.csv"]) is TASKS["suggest"]
    assert suggest_task(["cfg.yaml", "--task=classify"]) is TASKS["suggest"]


# --- a candidate is the sft run -----------------------------------------------------------------------


def test_a_candidate_trained_to_its_end_is_unfreeze_sft_bit_for_bit(tmp_path, pause_data):
    """Two candidates trained in interleaved slices (as halving does), each to its end, give exactly the losses
    of `unfreeze sft` with the same options: the same data order, dropout draws, LoRA start and steps."""
    from unfreeze.recipes.sft.recipe import load_config
    from unfreeze.recipes.sft.recipe import run as sft_run
    from unfreeze.recipes.suggest import sft_recipe

    config = _config(tmp_path, pause_data)
    cfg = parse_args(SFTSuggestConfig, [str(config), "--candidates", "lora,pause_embedding+pause_head+lm_head"],
                     "unfreeze suggest", positional=("config",))
    names = sft_recipe.validate(cfg)
    import logging

    read = None
    arms = sft_recipe.start_arms(cfg, names, read, logging.getLogger("test"))
    while not all(arm.done for arm in arms):
        for arm in arms:
            arm.advance(2)
            arm.evaluate()
    for arm in arms:
        options = {"trainable_layers": "lora"} if arm.name == "lora" else {
            "unfreeze_pause_embedding": "true", "unfreeze_pause_head": "true", "unfreeze_lm_head": "true"}
        out = tmp_path / f"sft_{arm.name[:4]}"
        metrics = sft_run(load_config(str(config), [f"{k}={v}" for k, v in options.items()], str(out)))
        assert arm.history[-1][2] == metrics["eval_loss"]  # bit for bit
        assert arm.losses["eval_lm_loss"] == metrics["eval_lm_loss"]
        assert arm.total_steps == metrics["optimizer_steps"]


def test_rows_rank_by_rounds_then_loss_then_predicted_time():
    from unfreeze.recipes.suggest.sft_output import rank_key

    rows = [{"name": "a", "rounds": 1, "val_loss": 1.0, "predicted_time_s": 1.0},
            {"name": "b", "rounds": 2, "val_loss": 3.0, "predicted_time_s": 1.0},
            {"name": "c", "rounds": 2, "val_loss": 2.0, "predicted_time_s": 9.0},
            {"name": "d", "rounds": 2, "val_loss": 2.0, "predicted_time_s": 5.0}]
    assert [r["name"] for r in sorted(rows, key=rank_key)] == ["d", "c", "b", "a"]


# --- the command ----------------------------------------------------------------------------------------


def test_cli_ranks_sft_candidates_and_writes_a_sweep_that_runs(tmp_path, pause_data, capsys):
    config = _config(tmp_path, pause_data)
    out, sweep_file = tmp_path / "suggest", tmp_path / "confirm.yaml"
    code = cli_main(["suggest", str(config), "--candidates", "last_layer,pause_embedding+pause_head,all",
                     "--budget", "0.5", "--seeds", "2", "--top", "2", "--write_sweep", str(sweep_file),
                     "--out", str(out)])
    assert code == 0
    result = json.loads((out / "suggestion.json").read_text())
    rows = result["candidates"]
    assert result["task"] == "sft" and [r["rank"] for r in rows] == [1, 2, 3]
    assert result["pick"] == rows[0]["name"]
    # further rounds rank first; within a round, the lower validation loss
    for a, b in zip(rows, rows[1:]):
        assert (-a["rounds"], a["val_loss"]) <= (-b["rounds"], b["val_loss"])
    assert result["sweep"]["runs"] == 6 and result["spent_work_s"] > 0
    assert (out / "suggestion.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "val loss" in printed and "pick:" in printed
    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["command"] == "sft" and sweep["seeds"] == [42, 43] and len(sweep["rows"]) == 2
    assert sweep["settings"]["model_config"] == json.dumps(TINY)
    from unfreeze.sweep.spec import load_sweep

    assert len(load_sweep(sweep_file).rows) == 2  # sft's own parser takes every row


def test_other_column_names(tmp_path, capsys):
    import csv

    data = tmp_path / "instructions.csv"
    with data.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "response"])
        writer.writeheader()
        for row in toy_rows(24, pauses=False):
            writer.writerow({"instruction": row["question"], "response": row["answer"]})
    config = _config(tmp_path, data, pause_token=None, prompt_column="instruction", completion_column="response",
                     prompt_template="Q: {prompt}\nA: ")
    out = tmp_path / "suggest"
    assert cli_main(["suggest", "--task", "sft", str(config), "--candidates", "last_layer,norms",
                     "--budget", "0.6", "--out", str(out)]) == 0
    result = json.loads((out / "suggestion.json").read_text())
    assert {r["name"] for r in result["candidates"]} == {"last_layer", "norms"}
    assert all(r["val_loss"] > 0 for r in result["candidates"])


def test_a_budget_short_of_one_round_is_one_line_and_writes_nothing(tmp_path, pause_data, capsys):
    config = _config(tmp_path, pause_data)
    out = tmp_path / "suggest"
    code = cli_main(["suggest", str(config), "--candidates", "last_layer,all", "--budget", "0.01s", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert code == 2 and len(errors) == 1 and errors[0] == err[-1]  # above it: the candidates' setups, said
    assert err[-1].startswith("unfreeze suggest: error: --budget 0.01s") and "less than one training step" in err[-1]
    assert not (out / "suggestion.json").exists()
    assert not out.exists() or not any(out.iterdir())  # refused before the run started: no config, no log


@pytest.mark.parametrize("args, message", [
    (["--candidates", "last_layer,mlp:blocks:7"], "block 7"),
    (["--candidates", "last_layer,nonsense"], "nonsense"),
    (["--score", "accuracy", "--score_limit", "0"], "--score_limit"),
    (["--export", "x"], "--export is not taken"),
])
def test_bad_search_options_exit_2_before_any_work(tmp_path, pause_data, capsys, args, message):
    config = _config(tmp_path, pause_data)
    out = tmp_path / "suggest"
    assert cli_main(["suggest", str(config), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.real_weights
@pytest.mark.skipif(not GSM8K.is_dir(), reason="../shared/data not present")
def test_smollm2_on_gsm8k_through_the_cli(tmp_path, smollm2_gguf, capsys):
    """The real pretrained SmolLM2-135M on GSM8K questions, two candidates, finalists scored by generation."""
    config = tmp_path / "smol.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(smollm2_gguf), "data": str(GSM8K), "pause_token": None, "train_limit": 24,
        "val_fraction": 0.25, "max_length": 256, "batch_size": 4, "lr": 1e-4, "eval_every": 0,
        "report_to": "none", "max_new_tokens": 24, "test_batch_size": 4}))
    out = tmp_path / "suggest"
    assert cli_main(["suggest", str(config), "--candidates", "last_layer,norms", "--budget", "150s", "--seeds", "1",
                     "--score", "accuracy", "--score_limit", "2", "--top", "2", "--out", str(out)]) == 0
    result = json.loads((out / "suggestion.json").read_text())
    rows = result["candidates"]
    assert {r["name"] for r in rows} == {"last_layer", "norms"}
    assert all("test_accuracy" in r and r["test_questions"] == 2 for r in rows)
    assert all(1.0 < r["val_loss"] < 5.0 for r in rows)  # a pretrained model's loss on GSM8K answers, not a random one's
    assert rows[0]["trainable_params"] != rows[1]["trainable_params"]


def test_the_python_api_takes_an_sft_config_file(tmp_path, pause_data):
    import unfreeze

    result = unfreeze.suggest(_config(tmp_path, pause_data), candidates="last_layer,all", budget="0.6",
                              out=str(tmp_path / "s"))
    assert result.metrics["task"] == "sft" and result.metrics["pick"] in ("last_layer", "all")
    assert (tmp_path / "s" / "suggestion.json").is_file()
