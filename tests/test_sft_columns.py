"""`unfreeze sft` on any prompt/completion rows: column names, the prompt template, file formats, bad input."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pause_helpers import save_tiny_tokenizer, tiny_tokenizer
from unfreeze.cli import main as cli_main
from unfreeze.data import sft_data
from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import IGNORE_INDEX
from unfreeze.recipes.eval_gsm8k.recipe import EvalConfig
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.recipes.sft.setup import load_data

TEMPLATE = "Instruction: {prompt}\nResponse:"
TINY_MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2}


def instruction_rows(n: int) -> list[dict]:
    """Rows with non-GSM8K column names: a word to repeat, and an id column that is never read."""
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon"]
    return [{"id": i, "instruction": f"Repeat {words[i % len(words)]} twice.",
             "response": f" {words[i % len(words)]} {words[i % len(words)]}"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- the template ---------------------------------------------------------------------------------------


def test_the_default_template_is_the_gsm8k_prompt_byte_for_byte():
    expected = "### INPUT: {prompt}\n\n ### Answer:"
    assert sft_data.PROMPT_TEMPLATE == SFTConfig().prompt_template == EvalConfig().prompt_template == expected
    assert sft_data.format_prompt("Q?") == "### INPUT: Q?\n\n ### Answer:"
    assert SFTConfig().prompt_column == "question" and SFTConfig().completion_column is None


@pytest.mark.parametrize("template, message", [
    ("Question: ", "has no {prompt} field"),
    ("Q: {question}", "has the field {question}"),
    ("Q: {prompt:>9}", "has the field {prompt:>9}"),
    ("Q: {}", "has the field {}"),
    ("Q: {prompt", "is not a format string"),
    ('{"a": {prompt}}', "has the field {\"a\""),
])
def test_bad_templates_name_the_key_and_the_fix(template, message):
    with pytest.raises(UsageError, match="prompt_template") as caught:
        sft_data.check_template(template)
    assert message in str(caught.value) and "{{ }}" in str(caught.value)


def test_literal_braces_and_a_repeated_prompt_are_fine():
    template = sft_data.check_template('{{"q": "{prompt}"}} -> {prompt} =')
    assert sft_data.format_prompt("2+2", template) == '{"q": "2+2"} -> 2+2 ='


def test_the_label_mask_covers_exactly_the_templated_prompt():
    tokenizer = tiny_tokenizer()  # one token per byte
    example = sft_data.encode_example(tokenizer, "Repeat x.", " x", 600, template=TEMPLATE)
    prompt = TEMPLATE.format(prompt="Repeat x.")
    assert example.input_ids == tokenizer(prompt).input_ids + tokenizer(" x").input_ids + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + example.input_ids[len(prompt):]


# --- files and columns ----------------------------------------------------------------------------------


def test_every_format_gives_the_same_rows(tmp_path):
    import pandas as pd

    rows = instruction_rows(6)
    frame = pd.DataFrame(rows)
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    expected = [{"question": row["instruction"], "answer": row["response"]} for row in rows]
    for name in ("d.jsonl", "d.json", "d.csv", "d.tsv", "d.parquet"):
        assert sft_data.read_rows(tmp_path / name, "response", "instruction") == expected, name
    # CSV cells stay text: a column of numbers is not turned into integers (or a 0.0/NaN mix)
    (tmp_path / "n.csv").write_text("q,a\nx,42\ny,007\n", encoding="utf-8")
    assert sft_data.read_rows(tmp_path / "n.csv", "a", "q") == [{"question": "x", "answer": "42"},
                                                              {"question": "y", "answer": "007"}]
    # a folder with a tabular training file (no GSM8K test file taken from it)
    (tmp_path / "folder").mkdir()
    frame.to_csv(tmp_path / "folder" / "train.csv", index=False)
    frame.to_csv(tmp_path / "folder" / "test.csv", index=False)
    assert sft_data.data_files(str(tmp_path / "folder")) == (tmp_path / "folder" / "train.csv", None)


@pytest.mark.parametrize("rows, columns, message", [
    ([{"instruction": "a", "response": "b"}], ("question", "response"),
     "row 1 has no 'question' field (prompt_column; it lacks string fields among 'question', 'response'; "
     "it has: instruction, response)"),
    ([{"instruction": "a", "response": "b"}], ("instruction", "output"),
     "row 1 has no 'output' field (completion_column;"),
    ([{"instruction": "a", "response": "b"}, {"instruction": "c", "response": "  "}], ("instruction", "response"),
     "row 2 has an empty 'response' field (completion_column): nothing to learn; its columns: instruction, response"),
    ([{"instruction": "a", "response": 7}], ("instruction", "response"), "row 1 has a non-text 'response' field"),
])
def test_missing_columns_and_empty_completions_name_the_column_and_the_columns(tmp_path, rows, columns, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UsageError) as caught:
        sft_data.read_rows(path, columns[1], columns[0])
    assert message in str(caught.value)


def test_an_empty_csv_cell_is_an_empty_completion_and_garbage_parquet_one_line(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,response\na,b\nc,\n", encoding="utf-8")
    with pytest.raises(UsageError, match="row 2 has an empty 'response' field"):
        sft_data.read_rows(tmp_path / "d.csv", "response", "instruction")
    (tmp_path / "d.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(UsageError, match=r"d.parquet: cannot read it as PARQUET \("):
        sft_data.read_rows(tmp_path / "d.parquet", "response", "instruction")


def test_load_data_applies_columns_and_template_and_masks_the_prompt(tmp_path):
    """The recipe's own data step: every example's loss is on its completion tokens and nothing else."""
    rows = instruction_rows(12)
    config = SFTConfig(data=str(write_jsonl(tmp_path / "d.jsonl", rows)), prompt_column="instruction",
                       completion_column="response", prompt_template=TEMPLATE, pause_token=None, val_fraction=0.25)
    tokenizer = tiny_tokenizer()
    model = SimpleNamespace(tokenizer=tokenizer, control_tokens=[], pause_tokenization="exact")
    data = load_data(config, model, logging.getLogger("test"))
    examples = data.train.examples + data.val.examples
    assert (len(data.train.examples), len(data.val.examples)) == (9, 3)
    by_prompt = {tuple(tokenizer(TEMPLATE.format(prompt=row["instruction"])).input_ids): row for row in rows}
    seen = set()
    for example in examples:
        (prompt,) = [p for p in by_prompt if tuple(example.input_ids[:len(p)]) == p]
        seen.add(prompt)
        completion = tokenizer(by_prompt[prompt]["response"]).input_ids + [tokenizer.eos_token_id]
        assert example.input_ids == [*prompt, *completion]
        assert example.labels == [IGNORE_INDEX] * len(prompt) + completion
    assert len(seen) == len(set(by_prompt))  # 8 distinct prompts, all there


# --- the recipe end to end ------------------------------------------------------------------------------


def _config(tmp_path: Path, data: Path, **overrides) -> Path:
    tokenizer = tmp_path / "tok"
    if not tokenizer.exists():
        save_tiny_tokenizer(tokenizer)
    values = {"model": "gpt2", "weights": "random", "model_config": json.dumps(TINY_MODEL),
              "tokenizer": str(tokenizer), "data": str(data), "pause_token": None, "unfreeze_lm_head": True,
              "prompt_column": "instruction", "completion_column": "response", "prompt_template": TEMPLATE,
              "batch_size": 4, "lr": 1e-2, "num_epochs": 3, "eval_every": 0, "log_every": 2, "max_length": 128}
    values.update(overrides)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_custom_columns_train_and_the_test_step_gets_the_template(tmp_path, monkeypatch):
    calls = []

    def evaluate(config, folder, **kwargs):
        calls.append(config.prompt_template)
        return [], {"test_accuracy": 0.0}

    stub = types.ModuleType("unfreeze.recipes.eval_gsm8k.recipe")
    stub.evaluate, stub.EvalConfig, stub.RESULTS_FILE = evaluate, EvalConfig, "test_results.json"
    monkeypatch.setitem(sys.modules, "unfreeze.recipes.eval_gsm8k.recipe", stub)
    data = write_jsonl(tmp_path / "custom" / "train.jsonl", instruction_rows(24))
    out = tmp_path / "run"
    path = _config(tmp_path, data, eval_at_start=True, test=True, test_data="unused.jsonl")
    metrics = run_config(load_config(str(path), out=str(out)))
    assert (metrics["n_train"], metrics["n_val"]) == (22, 2)
    assert metrics["eval_loss"] < 0.8 * metrics["initial_eval_loss"]
    assert calls == [TEMPLATE]
    assert json.loads((out / "config.json").read_text())["prompt_template"] == TEMPLATE


@pytest.mark.parametrize("overrides, message", [
    (["completion_column=output"], "row 1 has no 'output' field (completion_column; it lacks string fields among "
                                   "'instruction', 'output'; it has: id, instruction, response)"),
    (["prompt_column=question"], "row 1 has no 'question' field (prompt_column;"),
    (["prompt_template=Q: {question}"], "prompt_template 'Q: {question}' has the field {question}"),
    (["answer_field=pause_augmented_answer"], "completion_column='response' and answer_field="),
    (["model=/nowhere/x.gguf", "weights=pretrained", "model_config=null"], "model /nowhere/x.gguf: no such GGUF file"),
])
def test_bad_columns_and_templates_exit_2_without_metrics(tmp_path, capsys, overrides, message):
    data = write_jsonl(tmp_path / "d.jsonl", instruction_rows(8))
    out = tmp_path / "run"
    assert cli_main(["sft", str(_config(tmp_path, data)), *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_an_empty_completion_exits_2(tmp_path, capsys):
    rows = instruction_rows(8)
    rows[5]["response"] = ""
    out = tmp_path / "run"
    assert cli_main(["sft", str(_config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows))), "--out", str(out)]) == 2
    assert "row 6 has an empty 'response' field (completion_column)" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_eval_gsm8k_refuses_a_bad_template_before_any_work(tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["eval-gsm8k", "--model", str(tmp_path), "--prompt_template", "no field",
                     "--out", str(out)]) == 2
    assert "--prompt_template 'no field' has no {prompt} field" in capsys.readouterr().err
    assert not out.exists()


def test_eval_gsm8k_generates_from_the_templated_prompt(monkeypatch):
    import unfreeze.models.generation as generation
    from pause_helpers import tiny_model
    from unfreeze.recipes.eval_gsm8k.recipe import generate_and_score

    seen = []

    def fake_generate(step, prompts, **kwargs):
        seen.extend(list(p) for p in prompts)
        return [generation.Generation(tokens=[0], stopped_at_eos=False) for _ in prompts]

    monkeypatch.setattr(generation, "greedy_generate", fake_generate)
    model = tiny_model()
    rows = [{"question": "How many?", "answer": "#### 3", "ground_truth": "3"}]
    generate_and_score(model, rows, batch_size=1, max_new_tokens=4, pause_temperature=1.0, device="cpu",
                       progress=False, template=TEMPLATE)
    assert seen == [model.tokenizer(TEMPLATE.format(prompt="How many?")).input_ids]
