"""`unfreeze eval-gsm8k`: the scorer on hand-written completions, generation + scoring through a scripted
model, the command end to end on a tiny saved model, bad input, and a model saved by `unfreeze sft`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unfreeze.cli import main
from unfreeze.recipes.eval_gsm8k.recipe import (
    clean_completion,
    generate_and_score,
    is_correct,
    mean_pauses_per_answer,
    predicted_answer,
    summarize,
)

PAUSE = "<|pause|>"
EOT = "<|endoftext|>"
METRIC_KEYS = {"test_accuracy", "mean_pauses_per_reply", "max_pauses_per_reply", "mean_generated_tokens",
               "generated_tokens_per_s", "eval_time_s"}
RECORD_KEYS = {"question", "generated_text", "predicted_answer", "ground_truth", "correct", "num_pauses",
               "num_generated_tokens"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are latency-bound; 2 threads on a busy machine make every op wait (see test_generation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the scorer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion, expected", [
    ("She sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),
    (f"She<|pause|> sells{PAUSE}{PAUSE} 9 eggs.\n#### 1{PAUSE}8{EOT}", "18"),  # pauses inside the number
    ("Total: 1,000 + 234 = 1,234\n#### 1,234", "1234"),  # commas removed
    ("#### 1,234,567", "1234567"),
    ("He loses 5 dollars.\n#### -5", "-5"),  # negative
    ("Each costs 3.50.\n#### 3.50", "3.50"),  # decimal
    (f"####{PAUSE} 7", "7"),  # a pause between the marker and the number
    ("#### 12\n#### 13", "12"),  # the first answer counts
    ("The answer is 18.", None),  # no ####
    ("####18", None),  # the regex needs the space
    ("#### ", None),
    ("", None),
])
def test_predicted_answer(completion, expected):
    assert predicted_answer(completion, [PAUSE], [EOT]) == expected


def test_clean_completion_removes_pauses_and_special_tokens_only():
    text = f"a{PAUSE} b{EOT}<|x|> c{PAUSE}"
    assert clean_completion(text, [PAUSE], [EOT, "<|x|>"]) == "a b c"
    assert clean_completion(text, [], []) == text


@pytest.mark.parametrize("predicted, truth, expected", [
    ("18", "18", True), ("18.0", "18", True), ("18.", "18", True), ("-5", "-5", True), ("3.50", "3.5", True),
    ("17", "18", False), ("-18", "18", False), (None, "18", False), ("1.2.3", "1.2.3", True), ("1.2.3", "123", False),
])
def test_is_correct(predicted, truth, expected):
    assert is_correct(predicted, truth) is expected


@pytest.mark.parametrize("predicted, truth, expected", [
    ("18", "18", True), ("18.0", "18", False), ("18.", "18", False), ("-5", "-5", True), ("3.50", "3.5", False),
    ("017", "17", False), ("17", "18", False), (None, "18", False), ("1.2.3", "1.2.3", True),
])
def test_is_correct_as_strings_is_the_references_definition(predicted, truth, expected):
    assert is_correct(predicted, truth, as_numbers=False) is expected


def test_summarize_reports_the_string_and_the_numeric_accuracy():
    keys = ("correct", "correct_numeric", "predicted_answer", "num_pauses", "num_generated_tokens", "stopped_at_eos")
    records = [dict(zip(keys, (True, True, "7", 0, 5, True))), dict(zip(keys, (False, True, "7.0", 0, 5, True))),
               dict(zip(keys, (False, False, "8", 0, 5, True))), dict(zip(keys, (False, False, None, 0, 5, True)))]
    metrics = summarize(records, generation_s=1.0, eval_s=1.0)
    assert metrics["test_accuracy"] == 0.25 and metrics["num_correct"] == 1
    assert metrics["test_accuracy_numeric"] == 0.5 and metrics["num_correct_numeric"] == 2


def test_summarize_and_train_pause_rate():
    keys = ("correct", "predicted_answer", "num_pauses", "num_generated_tokens", "stopped_at_eos")
    records = [dict(zip(keys, (True, "1", 3, 10, True))), dict(zip(keys, (False, None, 0, 30, False)))]
    metrics = summarize(records, generation_s=4.0, eval_s=5.0)
    assert metrics["test_accuracy"] == 0.5 and metrics["num_without_answer"] == 1
    assert metrics["mean_pauses_per_reply"] == 1.5 and metrics["max_pauses_per_reply"] == 3
    assert metrics["mean_generated_tokens"] == 20 and metrics["generated_tokens_per_s"] == 10.0
    assert metrics["num_stopped_by_length"] == 1 and metrics["eval_time_s"] == 5.0
    rows = [{"answer": f"a{PAUSE}b{PAUSE}"}, {"answer": "c"}, {"answer": f"{PAUSE}d"}]
    assert mean_pauses_per_answer(rows, [PAUSE]) == 1.0


# --- generation + scoring through a scripted model ---------------------------------------------------------


def byte_tokenizer(with_pause: bool = True):
    """One token per byte (ids 0-255), <|endoftext|> = 256 and, optionally, <|pause|> = 257."""
    from transformers import AddedToken, GPT2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()} | {EOT: 256}
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=[])
    if with_pause:
        tokenizer.add_tokens([AddedToken(PAUSE, special=True, normalized=False)], special_tokens=True)
    return tokenizer


class ScriptedModel(torch.nn.Module):
    """Answers every question with the same script, one token per call (the call count is the "cache")."""

    def __init__(self, script: str):
        super().__init__()
        self.tokenizer = byte_tokenizer()
        self.control_token_ids = [257]
        self.control_tokens = [PAUSE]
        self.config = SimpleNamespace(n_positions=1024)
        self.script = self.tokenizer(script).input_ids + [self.tokenizer.eos_token_id]

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        step = past_key_values or 0
        logprobs = torch.full((*input_ids.shape, 258), -30.0)
        logprobs[:, -1, self.script[min(step, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logprobs=logprobs, past_key_values=step + 1)


def test_generate_and_score_reads_pauses_commas_and_eos():
    model = ScriptedModel(f"Think{PAUSE} hard.\n#### 1,0{PAUSE}00")
    rows = [{"question": f"q{i}", "ground_truth": truth} for i, truth in enumerate(["1000", "7", "1000.0"])]
    records, seconds = generate_and_score(model, rows, batch_size=2, max_new_tokens=64, pause_temperature=1.0,
                                          device="cpu", progress=False)
    assert [r["question"] for r in records] == ["q0", "q1", "q2"]  # input order, whatever the batching
    assert [r["correct_numeric"] for r in records] == [True, False, True]
    assert [r["correct"] for r in records] == [True, False, False]  # the reference's string comparison
    first = records[0]
    assert first["generated_text"] == f"Think{PAUSE} hard.\n#### 1,0{PAUSE}00"  # raw, EOS dropped
    assert first["predicted_answer"] == "1000" and first["num_pauses"] == 2 and first["stopped_at_eos"]
    assert first["num_generated_tokens"] == len(model.script)  # pauses and EOS are generated tokens
    assert RECORD_KEYS <= set(first) and seconds > 0


def test_pause_temperature_zero_removes_the_scripted_pauses():
    # The script's pause steps now emit the best normal token instead (here: every token is at -30).
    model = ScriptedModel(f"#### 4{PAUSE}2")
    records, _ = generate_and_score(model, [{"question": "q", "ground_truth": "42"}], batch_size=1,
                                    max_new_tokens=64, pause_temperature=0.0, device="cpu", progress=False)
    assert records[0]["num_pauses"] == 0


def test_max_length_counts_the_prompt_of_each_question():
    """Questions of different lengths in one batch: each stops at max_length tokens, prompt included."""
    from unfreeze.data.sft_data import encode_prompt

    model = ScriptedModel("x" * 300)  # never reaches its EOS within the budget
    rows = [{"question": q, "ground_truth": "1"} for q in ("short", "a much longer question " * 3, "mid length")]
    records, _ = generate_and_score(model, rows, batch_size=3, max_new_tokens=None, max_length=120,
                                    pause_temperature=1.0, device="cpu", progress=False)
    lengths = [len(encode_prompt(model.tokenizer, row["question"])) for row in rows]
    assert len(set(lengths)) == 3
    assert [n + r["num_generated_tokens"] for n, r in zip(lengths, records)] == [120, 120, 120]
    assert not any(r["stopped_at_eos"] for r in records)
    # With max_new_tokens as well, the tighter limit wins for each question.
    records, _ = generate_and_score(model, rows, batch_size=3, max_new_tokens=60, max_length=120,
                                    pause_temperature=1.0, device="cpu", progress=False)
    assert [r["num_generated_tokens"] for r in records] == [min(60, 120 - n) for n in lengths]


@pytest.mark.parametrize("limits, fragment", [
    ({"max_new_tokens": None, "max_length": None}, "--max_length"),
    ({"max_new_tokens": 10, "max_length": 8}, "--max_length 8"),
    ({"max_new_tokens": 2000, "max_length": None}, "1024 positions"),
])
def test_impossible_generation_budgets_are_usage_errors(limits, fragment):
    from unfreeze.errors import UsageError

    with pytest.raises(UsageError, match=fragment):
        generate_and_score(ScriptedModel("#### 1"), [{"question": "a question", "ground_truth": "1"}], batch_size=1,
                           pause_temperature=1.0, device="cpu", progress=False, **limits)


# --- the command, end to end on a tiny saved model ----------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


QUESTIONS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A book costs $1,200. What does it cost?", "answer": "It costs 1,200.\n#### 1,200"},
    {"question": "What is 2 - 5?", "answer": "2 - 5 = -3\n#### -3"},
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 with a pause token, saved as `unfreeze sft` saves its model."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from unfreeze.models.control.tokens import ControlTokenLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=257, n_positions=512,
                                    bos_token_id=256, eos_token_id=256))
    model = ControlTokenLM.from_base(lm, byte_tokenizer(with_pause=False), control_tokens=[PAUSE])
    with torch.no_grad():
        model.pause_head.bias[0] = 2.0  # a random LM is flat: pause often, so pauses get counted
    folder = tmp_path_factory.mktemp("model") / "final"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def test_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "test.jsonl", QUESTIONS)


def eval_args(model, data, out, *extra: str) -> list[str]:
    return ["eval-gsm8k", "--model", str(model), "--data", str(data), "--out", str(out),
            "--max_new_tokens", "6", "--batch_size", "2", *extra]


def test_eval_command_writes_results_and_metrics(saved_model, test_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": f"a{PAUSE}{PAUSE} #### 1"},
                                                   {"question": "q", "answer": "b #### 2"}])
    out = tmp_path / "run"
    assert main(eval_args(saved_model, test_file, out, "--limit", "2", "--train_stats", str(train))) == 0
    records = json.loads((out / "test_results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(records) == 2 and all(RECORD_KEYS <= set(r) for r in records)
    assert [r["ground_truth"] for r in records] == ["7", "1200"]
    assert all(0 < r["num_generated_tokens"] <= 6 for r in records)
    assert METRIC_KEYS <= set(metrics) and metrics["num_questions"] == 2
    assert metrics["mean_pauses_per_reply"] == sum(r["num_pauses"] for r in records) / 2 > 0
    assert metrics["train_mean_pauses_per_answer"] == 1.0
    assert json.loads((out / "eval_config.json").read_text())["limit"] == 2
    assert (out / "run.log").exists() and not list(out.glob(".*.tmp"))


def test_eval_pause_temperature_zero_never_pauses(saved_model, test_file, tmp_path):
    out = tmp_path / "run"
    assert main(eval_args(saved_model, test_file, out, "--pause_temperature", "0")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_pauses_per_reply"] == 0 and metrics["pause_temperature"] == 0.0


def bad_inputs(tmp_path: Path, saved_model: Path, test_file: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    no_field = write_jsonl(tmp_path / "no_field.jsonl", [{"question": "q", "solution": "#### 1"}])
    no_answer = write_jsonl(tmp_path / "no_answer.jsonl", [{"question": "q", "answer": "it is 4"}])
    return {
        "missing model": (eval_args(tmp_path / "nope", test_file, tmp_path / "o"), "no such folder"),
        "empty folder": (eval_args(empty, test_file, tmp_path / "o"), "not a model folder"),
        "junk config": (eval_args(junk, test_file, tmp_path / "o"), "junk"),
        "missing field": (eval_args(saved_model, no_field, tmp_path / "o"), "'answer'"),
        "no ####": (eval_args(saved_model, no_answer, tmp_path / "o"), "####"),
        "limit 0": (eval_args(saved_model, test_file, tmp_path / "o", "--limit", "0"), "--limit"),
        "negative T": (eval_args(saved_model, test_file, tmp_path / "o", "--pause_temperature", "-1"),
                       "--pause_temperature"),
    }


@pytest.mark.parametrize("case", ["missing model", "empty folder", "junk config", "missing field", "no ####",
                                  "limit 0", "negative T"])
def test_bad_input_is_one_error_line_and_no_metrics(case, saved_model, test_file, tmp_path, capsys):
    args, fragment = bad_inputs(tmp_path, saved_model, test_file)[case]
    out = tmp_path / "o"
    out.mkdir()
    # Issue #12 reverses the earlier rule ("a stale result must not survive a failed rerun"): a finished
    # run is never destroyed by a rerun, even one with --overwrite, unless the rerun succeeds.
    (out / "metrics.json").write_text("{}")
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unfreeze eval-gsm8k: error:") and fragment in err
    assert (out / "metrics.json").read_text() == "{}" and not (out / "test_results.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_rerun_into_a_finished_evaluation_needs_overwrite_and_replaces_only_on_success(
        saved_model, test_file, tmp_path, monkeypatch, capsys):
    from unfreeze.recipes.eval_gsm8k import recipe as eval_gsm8k

    out = tmp_path / "run"
    assert main(eval_args(saved_model, test_file, out, "--limit", "1")) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(eval_args(saved_model, test_file, out, "--limit", "2")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    def broken(*args, **kwargs):
        raise RuntimeError("generation crashed")

    monkeypatch.setattr(eval_gsm8k, "generate_and_score", broken)
    with pytest.raises(RuntimeError):
        main(eval_args(saved_model, test_file, out, "--limit", "2", "--overwrite"))
    for name in ("metrics.json", "test_results.json", "eval_config.json"):
        assert (out / name).read_bytes() == first[name], name  # the old evaluation is whole
    log = (out / "run.log").read_text()
    assert log.startswith(first["run.log"].decode()) and "FAILED: RuntimeError: generation crashed" in log
    monkeypatch.undo()

    assert main(eval_args(saved_model, test_file, out, "--limit", "2", "--overwrite")) == 0
    assert json.loads((out / "metrics.json").read_text())["num_questions"] == 2
    assert len(json.loads((out / "test_results.json").read_text())) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_failure_after_the_evaluation_started_ends_its_log(saved_model, test_file, tmp_path, monkeypatch):
    from unfreeze.recipes.eval_gsm8k import recipe as eval_gsm8k

    def broken(*args, **kwargs):
        raise RuntimeError("generation crashed")

    monkeypatch.setattr(eval_gsm8k, "generate_and_score", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        main(eval_args(saved_model, test_file, out))
    assert "FAILED: RuntimeError: generation crashed" in (out / "run.log").read_text()
    assert not (out / "metrics.json").exists()


def test_evaluate_writes_nothing_the_caller_owns_the_folder(saved_model, test_file, tmp_path):
    """`evaluate` (what `unfreeze sft` calls when it tests) returns the records and metrics; the caller writes them."""
    from unfreeze.lifecycle import run_folder
    from unfreeze.recipes.eval_gsm8k.recipe import EvalConfig, evaluate

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"owner": "sft"}')
    config = EvalConfig(model=str(saved_model), data=str(test_file), out=str(out), limit=1, batch_size=1,
                        max_new_tokens=4)
    with run_folder("sft", str(out), overwrite=True) as folder:
        records, metrics = evaluate(config, folder, progress=False)
    assert json.loads((out / "metrics.json").read_text()) == {"owner": "sft"}
    assert metrics["num_questions"] == 1 and len(records) == 1 and not (out / "test_results.json").exists()


# --- a model saved by `unfreeze sft`, on the real GSM8K test set ------------------------------------------------


@pytest.mark.integration
def test_model_from_sft_evaluates_end_to_end(shared_data, tmp_path):
    test_jsonl = shared_data / "gsm8k" / "test.jsonl"
    if not test_jsonl.exists() or not (shared_data / "gpt2_bpe").is_dir():
        pytest.skip("../shared/data/gsm8k/test.jsonl or gpt2_bpe not present")
    config = tmp_path / "sft.yaml"
    config.write_text("\n".join([
        "model: gpt2", "weights: random", "model_config: '{\"n_layer\":2,\"n_embd\":32,\"n_head\":2}'",
        f"tokenizer: {shared_data / 'gpt2_bpe'}", f"data: {shared_data / 'gsm8k'}", "train_limit: 8",
        "max_length: 128", "batch_size: 4", "eval_every: 0", "unfreeze_pause_embedding: true",
        "unfreeze_pause_head: true", "test: true", "test_limit: 3", "test_batch_size: 2", "max_new_tokens: 8",
    ]) + "\n")
    run = tmp_path / "sft"
    assert main(["sft", str(config), "--out", str(run)]) == 0
    sft_metrics = json.loads((run / "metrics.json").read_text())
    assert "test_accuracy" in sft_metrics and (run / "test_results.json").exists()

    out = tmp_path / "eval"
    assert main(["eval-gsm8k", "--model", str(run / "final"), "--data", str(test_jsonl), "--limit", "3",
                 "--batch_size", "2", "--max_new_tokens", "8", "--out", str(out)]) == 0
    records = json.loads((out / "test_results.json").read_text())
    questions = [json.loads(line)["question"] for line in test_jsonl.read_text().splitlines()[:3]]
    assert [r["question"] for r in records] == questions
    # Greedy decoding is deterministic: the standalone command reproduces sft's own evaluation.
    sft_records = json.loads((run / "test_results.json").read_text())
    assert [r["generated_text"] for r in records] == [r["generated_text"] for r in sft_records]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == sft_metrics["test_accuracy"]


def test_plain_hugging_face_model_folder_evaluates_without_pauses(test_file, tmp_path):
    """The no-pause baselines: a plain causal LM folder (no control tokens) is scored the same way."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path / "plain"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=257, n_positions=512,
                               bos_token_id=256, eos_token_id=256)).save_pretrained(folder)
    byte_tokenizer(with_pause=False).save_pretrained(folder)
    out = tmp_path / "run"
    assert main(eval_args(folder, test_file, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == 3 and metrics["max_pauses_per_reply"] == 0
