"""`unfreeze inject-pauses` end to end: files, determinism, bad input, and the real GSM8K run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unfreeze.cli import main
from unfreeze.data.pauses import count_pauses, strip_pauses

P = "<|pause|>"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_dataset(folder: Path, n_train: int = 30, n_test: int = 7, extension: str = ".jsonl") -> dict:
    """A GSM8K-shaped data set: answers with '=', newlines, calculator marks and a final '#### n'."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
                  for i in range(n_train)],
        "test": [{"question": f"What is {i} * 3?", "answer": f"{i} * 3 = {3 * i}\n#### {3 * i}"} for i in range(n_test)],
    }
    for split, rows in splits.items():
        (folder / f"{split}{extension}").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return splits


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return ["inject-pauses", "--dataset_location", str(data), "--pause_token", P, "--n_pauses_per_patterns", "{}",
            "--augm_dataset_save_location", str(out), "--pause_augm_col_name", "answer", *extra]


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def data(tmp_path):
    splits = make_dataset(tmp_path / "gsm8k")
    return tmp_path / "gsm8k", splits


# ---------------------------------------------------------------- what a run writes

def test_same_flags_and_seed_give_byte_identical_files(tmp_path, data, capsys):
    folder, _ = data
    flags = ("--n_random_pauses", "6", "--variable_number_of_pauses", "--n_generated_samples_per_datapoint", "3")
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert main(command(folder, tmp_path / name, *flags, "--seed", seed)) == 0
    a, b, c = (tmp_path / name for name in "abc")
    assert (a / "train.json").read_bytes() == (b / "train.json").read_bytes()
    assert (a / "test.json").read_bytes() == (b / "test.json").read_bytes()
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()  # the seed matters
    assert (a / "test.json").read_bytes() == (c / "test.json").read_bytes()
    assert "wrote 90 training rows and 7 test rows" in capsys.readouterr().out


def test_copies_are_concatenated_round_trip_exactly_and_test_is_unchanged(tmp_path, data):
    folder, splits = data
    out = tmp_path / "out"
    assert main(command(folder, out, "--n_random_pauses", "4", "--n_generated_samples_per_datapoint", "3",
                        "--seed", "0")) == 0
    train, test = read(out / "train.json"), read(out / "test.json")
    assert test == splits["test"]
    assert len(train) == 3 * len(splits["train"])
    for index, row in enumerate(train):
        source = splits["train"][index % len(splits["train"])]  # copy after copy, in the original order
        assert row["question"] == source["question"] and list(row) == ["question", "answer"]
        assert strip_pauses(row["answer"], P) == source["answer"]
        assert count_pauses(row["answer"], P) == 4  # fixed mode: exactly n per answer
    # The copies are drawn independently, not repeated.
    n = len(splits["train"])
    assert [r["answer"] for r in train[:n]] != [r["answer"] for r in train[n:2 * n]]


def test_other_column_keeps_the_original_answer_and_patterns_apply(tmp_path, data):
    folder, splits = data
    out = tmp_path / "out"
    argv = command(folder, out, "--seed", "1")
    argv[argv.index("--pause_augm_col_name") + 1] = "pause_augmented_answer"
    argv[argv.index("--n_pauses_per_patterns") + 1] = '{"=": 2, "\\n": 1}'
    assert main(argv) == 0
    train = read(out / "train.json")
    for row, source in zip(train, splits["train"]):
        assert row["answer"] == source["answer"]
        # "=" appears twice per answer (" = " and "<<a+a=b>>"), one newline, plus the leading pause.
        assert count_pauses(row["pause_augmented_answer"], P) == 2 * 2 + 1 + 1
        assert row["pause_augmented_answer"].startswith(P)
        assert strip_pauses(row["pause_augmented_answer"], P) == source["answer"]
    assert read(out / "test.json") == splits["test"]  # the test set never gets the new column


def test_variable_mode_counts_stay_in_range_and_json_folder_is_read(tmp_path):
    splits = make_dataset(tmp_path / "gsm8k_json", n_train=200, extension=".json")
    out = tmp_path / "out"
    assert main(command(tmp_path / "gsm8k_json", out, "--n_random_pauses", "10", "--variable_number_of_pauses",
                        "--seed", "2", "--tokenizer_hf_name", "None")) == 0
    counts = [count_pauses(r["answer"], P) for r in read(out / "train.json")]
    assert len(counts) == len(splits["train"]) and min(counts) >= 0 and max(counts) <= 10
    assert len(set(counts)) > 5


def test_tokenizer_folder_and_existing_target(tmp_path, data):
    """A local tokenizer folder sets the slots; an existing target keeps its other files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder, splits = data
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator([r["answer"] for r in splits["train"]], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(tmp_path / "tok"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    (out / "train.json").write_text("stale", encoding="utf-8")
    assert main(command(folder, out, "--n_random_pauses", "3", "--tokenizer_hf_name", str(tmp_path / "tok"),
                        "--seed", "3")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "test.json", "train.json"]
    assert all(count_pauses(r["answer"], P) == 3 for r in read(out / "train.json"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]  # no staging left over


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from unfreeze import files
    from unfreeze.recipes.inject_pauses import recipe as inject_pauses

    calls = []

    def fsync_then_interrupt(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", fsync_then_interrupt)  # the writer inject-pauses uses
    with pytest.raises(KeyboardInterrupt):
        inject_pauses.write_folder(tmp_path / "out", {"train.json": "[]\n", "test.json": "[]\n"})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input: one line, exit 2, no files

def bad_cases(folder: Path) -> list[tuple[list[str], str]]:
    no_answer = folder.parent / "no_answer"
    make_dataset(no_answer)
    (no_answer / "train.jsonl").write_text('{"question": "q", "solution": "s"}\n', encoding="utf-8")
    no_test = folder.parent / "no_test"
    make_dataset(no_test)
    (no_test / "test.jsonl").unlink()
    with_pause = folder.parent / "with_pause"
    make_dataset(with_pause)
    (with_pause / "train.jsonl").write_text(json.dumps({"question": "q", "answer": f"a{P}b"}) + "\n", encoding="utf-8")
    a_file = folder.parent / "a_file"
    a_file.write_text("x", encoding="utf-8")
    return [
        (["--n_pauses_per_patterns", "{bad json"], "--n_pauses_per_patterns"),
        (["--n_pauses_per_patterns", '{"(": 1}'], "--n_pauses_per_patterns"),
        (["--n_pauses_per_patterns", '{"=": -2}'], "--n_pauses_per_patterns"),
        (["--n_random_pauses", "-1"], "--n_random_pauses"),
        (["--n_generated_samples_per_datapoint", "0"], "--n_generated_samples_per_datapoint"),
        (["--dataset_location", str(folder.parent / "absent")], "--dataset_location"),
        (["--dataset_location", str(no_test)], "--dataset_location"),
        (["--dataset_location", str(no_answer)], "--dataset_location"),
        (["--dataset_location", str(folder / "train.jsonl")], "--dataset_location"),
        (["--dataset_location", str(with_pause)], "--pause_token"),
        (["--pause_token", "aba"], "--pause_token"),
        (["--augm_dataset_save_location", str(a_file)], "--augm_dataset_save_location"),
        (["--n_random_pauses", "2", "--tokenizer_hf_name", str(folder.parent / "no_tokenizer_here")],
         "--tokenizer_hf_name"),
    ]


def test_bad_input_is_one_line_naming_the_flag_exit_2_and_nothing_written(tmp_path, data, capsys):
    folder, _ = data
    for extra, flag in bad_cases(folder):
        before = sorted(p.name for p in tmp_path.iterdir())
        out = tmp_path / "out"
        argv = command(folder, out, "--seed", "0")
        for name, value in zip(extra[::2], extra[1::2]):  # later flags override: argparse keeps the last
            argv += [name, value]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unfreeze inject-pauses: error:") and flag in err[0], (extra, err)
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == before, extra  # no staging folder either


def test_subprocess_exit_status_and_single_stderr_line(tmp_path, data):
    folder, _ = data
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "unfreeze", *command(folder, out), "--n_pauses_per_patterns",
                             "{not json"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--n_pauses_per_patterns is not valid JSON" in lines[0], result.stderr
    assert not out.exists()


# ---------------------------------------------------------------- the real data (../shared/data)

@pytest.mark.integration
def test_done_when_command_on_gsm8k(tmp_path, capsys):
    gsm8k, bpe = SHARED_DATA / "gsm8k", SHARED_DATA / "gpt2_bpe"
    if not (gsm8k / "train.jsonl").exists() or not (bpe / "encoder.json").exists():
        pytest.skip(f"{SHARED_DATA} (GSM8K and GPT-2 BPE files) is not present")
    out = tmp_path / "gsm8k_variable_random_pauses"
    assert main(["inject-pauses", "--dataset_location", str(gsm8k), "--pause_token", P, "--n_pauses_per_patterns",
                 "{}", "--augm_dataset_save_location", str(out), "--pause_augm_col_name", "answer", "--verbose",
                 "--n_random_pauses", "10", "--tokenizer_hf_name", str(bpe), "--variable_number_of_pauses",
                 "--n_generated_samples_per_datapoint", "5", "--verbose", "--seed", "42"]) == 0
    assert "wrote 37365 training rows and 1319 test rows" in capsys.readouterr().out

    import datasets

    loaded = datasets.load_dataset("json", data_files={"train": str(out / "train.json"),
                                                       "test": str(out / "test.json")},
                                   cache_dir=str(tmp_path / "hf_cache"))
    assert loaded["train"].num_rows == 37365 and loaded["test"].num_rows == 1319
    originals = [json.loads(line) for line in (gsm8k / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert loaded["test"].to_list() == [json.loads(line) for line in
                                        (gsm8k / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = loaded["train"]["answer"]
    assert all(strip_pauses(a, P) == originals[i % 7473]["answer"] for i, a in enumerate(answers))
    counts = [count_pauses(a, P) for a in answers]
    # U{0..10}: mean 5, sd 3.16, so the standard error over 37,365 answers is 0.016.
    assert abs(sum(counts) / len(counts) - 5) < 0.1 and min(counts) == 0 and max(counts) == 10


@pytest.mark.integration
def test_fixed_mode_on_the_full_gsm8k_train_set(tmp_path):
    gsm8k = SHARED_DATA / "gsm8k"
    if not (gsm8k / "train.jsonl").exists():
        pytest.skip(f"{gsm8k} is not present")
    out = tmp_path / "fixed"
    assert main(command(gsm8k, out, "--n_random_pauses", "3", "--seed", "0")) == 0
    answers = [r["answer"] for r in read(out / "train.json")]
    assert len(answers) == 7473 and all(count_pauses(a, P) == 3 for a in answers)
