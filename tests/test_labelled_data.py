"""`unfreeze classify --data` with any labelled data: formats, columns, classes, split, balance, bad input,
and the n-class scores (issue #14, item 4). Data is made here; models are tiny random GPT-2s."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pandas as pd
import pytest
from conftest import make_spam_rows

from unfreeze import scoring
from unfreeze.cli import main
from unfreeze.data import labelled, sms_spam
from unfreeze.data.labelled import DataOptions
from unfreeze.errors import UsageError

TINY = '{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":128}'
TOPICS = {"sports": ["goal", "match", "team", "score", "coach"], "weather": ["rain", "sun", "cloud", "wind"],
          "food": ["pizza", "bread", "soup", "salad", "cheese"]}


def topic_frame(n: int = 90, seed: int = 0, counts: dict | None = None) -> pd.DataFrame:
    """Separable 3-class rows with custom column names (`message`, `topic`), string labels."""
    rng = random.Random(seed)
    names = [name for name, k in counts.items() for _ in range(k)] if counts else [list(TOPICS)[i % 3] for i in range(n)]
    rows = [{"id": i, "message": " ".join(rng.choice(TOPICS[t]) for _ in range(rng.randint(3, 7))), "topic": t}
            for i, t in enumerate(names)]
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, path) -> str:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        frame.to_json(path, orient="records")
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    return str(path)


TOPIC_OPTIONS = DataOptions(text_column="message", label_column="topic")


def all_rows(splits) -> list[tuple[str, str]]:
    frames = pd.concat([splits.train, splits.validation, splits.test])
    return sorted((text, splits.class_names[label]) for text, label in zip(frames["Text"], frames["Label"]))


# --- end to end through the real CLI ---------------------------------------------------------------------
def test_three_class_csv_end_to_end_reports_per_class_results(byte_tokenizer_dir, tmp_path):
    data = write(topic_frame(90), tmp_path / "topics.csv")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "unfreeze", "classify", "--weights", "random", "--model_config", TINY,
                             "--tokenizer", str(byte_tokenizer_dir), "--data", data, "--text_column", "message",
                             "--label_column", "topic", "--num_epochs", "3", "--batch_size", "4", "--lr", "2e-3",
                             "--trainable_layers", "all", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["food", "sports", "weather"]  # sorted, whatever the row order
    expected = labelled.load_splits(data, TOPIC_OPTIONS)
    for split, key in (("validation", "n_val"), ("test", "n_test")):
        confusion = metrics["confusion"][split]
        assert len(confusion) == 3 and all(len(row) == 3 for row in confusion)
        # Row sums are the true class counts of the split, and they add up to its size.
        counts = getattr(expected, split)["Label"].value_counts()
        assert [sum(row) for row in confusion] == [int(counts.get(i, 0)) for i in range(3)]
        assert sum(map(sum, confusion)) == metrics[key]
        assert [c["support"] for c in metrics["per_class"][split]] == [sum(row) for row in confusion]
    # Training scores, like the reference's train_acc, come from the training loader, which drops the last
    # incomplete batch: 62 examples in batches of 4 -> 60 scored.
    assert metrics["n_train"] == 62 and sum(map(sum, metrics["confusion"]["train"])) == 60
    test = metrics["confusion"]["test"]
    assert metrics["test_acc"] == sum(test[i][i] for i in range(3)) / metrics["n_test"]
    assert metrics["test_f1"] == pytest.approx(scoring.macro_f1(test))
    for key in ("train_acc", "val_acc", "test_acc", "train_f1", "val_f1", "train_time_s", "trainable_params"):
        assert key in metrics, key
    assert metrics["test_acc"] > 0.6  # three separable topics: it learned (chance is 1/3)
    # The per-class table and the confusion matrix are printed at the end.
    assert "confusion (rows true, columns predicted)" in result.stderr
    for name in ("food", "sports", "weather"):
        assert any(line.strip().startswith(name) and "." in line for line in result.stderr.splitlines()), name


# --- formats, folders, columns, classes ---------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".json", ".parquet"])
def test_every_format_reads_the_same_rows_as_csv(tmp_path, suffix):
    frame = topic_frame(60)
    reference = labelled.load_splits(write(frame, tmp_path / "a.csv"), TOPIC_OPTIONS)
    other = labelled.load_splits(write(frame, tmp_path / f"a{suffix}"), TOPIC_OPTIONS)
    assert other.class_names == reference.class_names == ("food", "sports", "weather")
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(other, split), getattr(reference, split))


def test_a_folder_of_mixed_formats_keeps_its_own_splits(tmp_path):
    frame = topic_frame(60)
    folder = tmp_path / "folder"
    folder.mkdir()
    write(frame[:40], folder / "train.parquet")
    write(frame[40:50], folder / "dev.jsonl")  # validation may be called dev or val
    write(frame[50:], folder / "test.csv")
    splits = labelled.load_splits(str(folder), TOPIC_OPTIONS)
    assert splits.sizes() == {"train": 40, "validation": 10, "test": 10}
    assert splits.test["Text"].tolist() == frame["message"][50:].tolist()  # order kept, nothing shuffled
    assert [splits.class_names[i] for i in splits.validation["Label"]] == frame["topic"][40:50].tolist()


def test_integer_labels_and_default_column_names(tmp_path):
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(40)], "label": [10 if i % 3 else 2 for i in range(40)]})
    splits = labelled.load_splits(write(frame, tmp_path / "ints.csv"))
    assert splits.class_names == ("2", "10")  # numeric order, not "10" < "2"
    merged = pd.concat([splits.train, splits.validation, splits.test])
    by_text = dict(zip(merged["Text"], merged["Label"]))
    assert all(by_text[t] == (1 if label == 10 else 0) for t, label in zip(frame["text"], frame["label"]))


def test_sms_file_and_legacy_folder_give_the_old_splits(tmp_path, spam_csv_dir):
    rows = make_spam_rows(60) + [("ham", f"extra ham {i}") for i in range(40)]
    path = tmp_path / "SMSSpamCollection"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    for data in (str(path), str(spam_csv_dir)):
        old, new = sms_spam.load_splits(data), labelled.load_splits(data)
        for split in ("train", "validation", "test"):
            for column in ("Text", "Label"):
                assert getattr(new, split)[column].tolist() == getattr(old, split)[column].tolist()
    assert labelled.load_splits(str(path)).class_names == ("ham", "spam")


def test_sms_file_with_balance_false_keeps_every_row(tmp_path):
    rows = make_spam_rows(60) + [("ham", f"extra ham {i}") for i in range(40)]
    path = tmp_path / "SMSSpamCollection"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    splits = labelled.load_splits(str(path), DataOptions(balance=False))
    assert sum(splits.sizes().values()) == len(rows) == 100
    assert splits.sizes() == {"train": 70, "validation": 10, "test": 20}


def test_hub_dataset_uses_its_splits_and_class_label_names(monkeypatch):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business"])})

    def fake_load_dataset(name, config=None):
        assert (name, config) == ("someone/news", "small")

        def part(n):
            return datasets.Dataset.from_dict({"text": [f"news {i}" for i in range(n)], "label": [i % 3 for i in range(n)]},
                                              features=features)
        return datasets.DatasetDict({"train": part(12), "validation": part(6), "test": part(6), "unsupervised": part(3)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = labelled.load_splits("someone/news:small")
    assert splits.class_names == ("Business", "Sports", "World")
    assert splits.sizes() == {"train": 12, "validation": 6, "test": 6}
    assert [splits.class_names[i] for i in splits.train["Label"][:3]] == ["World", "Sports", "Business"]
    with pytest.raises(UsageError, match="--split 0.8,0.1,0.1: hub dataset someone/news:small already has"):
        labelled.load_splits("someone/news:small", DataOptions(split="0.8,0.1,0.1"))


def test_hub_dataset_without_a_labelled_test_split_is_split_like_one_file(monkeypatch):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def fake_load_dataset(name, config=None):
        def part(n, labelled=True):
            return datasets.Dataset.from_dict({"sentence": [f"{name} {n} {i}" for i in range(n)],
                                               "label": [i % 2 if labelled else -1 for i in range(n)]},
                                              features=features)
        # As GLUE: the test split's labels are all -1 (hidden).
        return datasets.DatasetDict({"train": part(80), "validation": part(20), "test": part(10, labelled=False)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = labelled.load_splits("glue:sst2")
    assert splits.class_names == ("negative", "positive")
    assert splits.sizes() == {"train": 70, "validation": 10, "test": 20}  # train + validation, cut 0.7/0.1/0.2


# --- split and balance -----------------------------------------------------------------------------------
def test_single_file_split_sizes_cover_every_row_and_follow_the_seed(tmp_path):
    frame = topic_frame(100)
    data = write(frame, tmp_path / "t.csv")
    splits = labelled.load_splits(data, TOPIC_OPTIONS)
    assert splits.sizes() == {"train": 70, "validation": 10, "test": 20}
    assert all_rows(splits) == sorted(zip(frame["message"], frame["topic"]))
    other = labelled.load_splits(data, DataOptions("message", "topic", split="0.5,0.25,0.25"))
    assert other.sizes() == {"train": 50, "validation": 25, "test": 25}
    again = labelled.load_splits(data, TOPIC_OPTIONS)
    assert again.train.equals(splits.train) and again.test.equals(splits.test)
    reseeded = labelled.load_splits(data, DataOptions("message", "topic", seed=7))
    assert reseeded.train["Text"].tolist() != splits.train["Text"].tolist()


def test_balance_undersamples_every_class_to_the_smallest(tmp_path):
    data = write(topic_frame(counts={"sports": 30, "weather": 20, "food": 10}), tmp_path / "t.csv")
    kept = labelled.load_splits(data, TOPIC_OPTIONS)
    assert sum(kept.sizes().values()) == 60  # off by default for a file that is not the SMS collection
    splits = labelled.load_splits(data, DataOptions("message", "topic", balance=True))
    merged = pd.concat([splits.train, splits.validation, splits.test])
    assert merged["Label"].value_counts().to_dict() == {0: 10, 1: 10, 2: 10}
    assert splits.sizes() == {"train": 21, "validation": 3, "test": 6}


def test_balance_on_a_folder_balances_each_split(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for name, counts in (("train", {"sports": 9, "food": 4, "weather": 5}), ("val", {"sports": 3, "food": 2, "weather": 2}),
                         ("test", {"sports": 2, "food": 3, "weather": 3})):
        write(topic_frame(counts=counts, seed=len(name)), folder / f"{name}.csv")
    splits = labelled.load_splits(str(folder), DataOptions("message", "topic", balance=True))
    assert splits.sizes() == {"train": 12, "validation": 6, "test": 6}


# --- bad input: exit 2, one line, nothing written -------------------------------------------------------------
@pytest.fixture
def bad_files(tmp_path):
    good = topic_frame(40)
    files = {"good": write(good, tmp_path / "good.csv"),
             "one_class": write(good.assign(topic="sports"), tmp_path / "one.csv"),
             "empty_text": write(good.assign(message=["" if i == 7 else m for i, m in enumerate(good["message"])]),
                                 tmp_path / "empty_text.csv"),
             "mixed": write(good.assign(topic=[1 if i % 2 else "x" for i in range(40)]), tmp_path / "mixed.jsonl"),
             "garbage": str(tmp_path / "garbage.parquet"), "xlsx": str(tmp_path / "sheet.xlsx"),
             "blank": str(tmp_path / "blank.csv")}
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04 a zip, not tab-separated text")
    (tmp_path / "blank.csv").write_text("")
    return files


BAD = {
    "one class": (["--data", "one_class", "--text_column", "message", "--label_column", "topic"], "one class"),
    "missing column": (["--data", "good", "--text_column", "message", "--label_column", "kind"], "id, message, topic"),
    "no default columns": (["--data", "good"], "--text_column"),
    "unreadable parquet": (["--data", "garbage"], "unreadable Parquet"),
    "unsupported suffix": (["--data", "xlsx"], "unsupported file type .xlsx"),
    "empty file": (["--data", "blank"], "empty"),
    "empty text": (["--data", "empty_text", "--text_column", "message", "--label_column", "topic"], "row 8"),
    "mixed label kinds": (["--data", "mixed", "--text_column", "message", "--label_column", "topic"], "mix integers"),
    "split leaves one empty": (["--data", "good", "--text_column", "message", "--label_column", "topic",
                                "--split", "0.98,0.01,0.01"], "--split 0.98,0.01,0.01 leaves the validation split"),
    "fractions do not sum to 1": (["--data", "good", "--text_column", "message", "--label_column", "topic",
                                   "--split", "0.7,0.2,0.2"], "sum to 1.1"),
    "split not three numbers": (["--data", "good", "--split", "0.7,0.3"], "--split"),
    "hub name offline": (["--data", "someone/no_such_dataset"], "--data PATH"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_exit_2_one_line_and_writes_nothing(case, bad_files, byte_tokenizer_dir, tmp_path, capsys):
    args, message = BAD[case]
    args = [bad_files.get(a, a) for a in args]
    out = tmp_path / "run"
    code = main(["classify", "--weights", "random", "--model_config", TINY, "--tokenizer", str(byte_tokenizer_dir),
                 "--out", str(out), *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert message in lines[0] and ("--data" in lines[0] or "--split" in lines[0] or "_column" in lines[0]), lines[0]
    assert not out.exists()


def test_split_on_a_folder_is_refused(spam_csv_dir):
    with pytest.raises(UsageError, match="--split"):
        labelled.load_splits(str(spam_csv_dir), DataOptions(split="0.7,0.1,0.2"))


# --- scoring -------------------------------------------------------------------------------------------
def test_scores_against_hand_computed_values():
    true, predicted = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    confusion = scoring.confusion_matrix(true, predicted, 3)
    assert confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert scoring.accuracy(confusion) == 4 / 6
    rows = scoring.per_class(confusion, ["a", "b", "c"])
    assert [(r["precision"], r["recall"], r["support"]) for r in rows] == [(0.5, 0.5, 2), (2 / 3, 1.0, 2), (1.0, 0.5, 2)]
    assert [r["f1"] for r in rows] == pytest.approx([0.5, 0.8, 2 / 3])
    assert scoring.macro_f1(confusion) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # A class absent from a split (as truth and as prediction) does not count; one never predicted scores 0.
    absent = scoring.confusion_matrix([0, 0], [0, 1], 3)
    assert scoring.macro_f1(absent) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(scoring.accuracy(scoring.confusion_matrix([], [], 2)))
    lines = scoring.report_lines(scoring.split_scores(true, predicted, ["a", "b", "c"]), ["a", "b", "c"], "test")
    assert lines[0] == "test: accuracy 66.67%, macro-F1 0.6556"


# --- one class per label value, whatever the format; no column twice (issue 22, item 5) ------------------
FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def two_class_frame(labels) -> pd.DataFrame:
    return pd.DataFrame({"Text": [f"message number {i}" for i in range(40)],
                         "Label": [labels[i % 2] for i in range(40)]})


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("labels,classes", [((1.0, 0.0), ("0", "1")), ((True, False), ("False", "True")),
                                            ((1, 0), ("0", "1"))])
def test_labels_become_the_same_classes_in_every_format(tmp_path, suffix, labels, classes):
    path = write(two_class_frame(labels), tmp_path / f"data{suffix}")
    splits = labelled.load_splits(path, DataOptions(balance=False))
    assert splits.class_names == classes
    frames = pd.concat([splits.train, splits.validation, splits.test])
    class_of = {text: splits.class_names[label] for text, label in zip(frames["Text"], frames["Label"])}
    assert (class_of["message number 0"], class_of["message number 1"]) == (classes[1], classes[0])


def test_spellings_of_one_label_in_a_csv_are_one_class(tmp_path):
    rows = [("1", "x"), ("1.0", "x"), (" 1 ", "x"), ("01", "x"), ("0", "y"), ("0.0", "y"), ("-0", "y")] * 4
    path = tmp_path / "numbers.csv"
    frame = pd.DataFrame({"Label": [l for l, _ in rows], "Text": [f"{t} {i}" for i, (_, t) in enumerate(rows)]})
    frame.to_csv(path, index=False)
    assert labelled.load_splits(str(path), DataOptions(balance=False)).class_names == ("0", "1")
    words = tmp_path / "words.jsonl"
    words.write_text("".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                             for i, v in enumerate(["true", "TRUE", True, "False", "false", False] * 4)))
    assert labelled.load_splits(str(words), DataOptions(balance=False)).class_names == ("False", "True")


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_label_with_a_fraction_is_refused_in_every_format(tmp_path, suffix):
    path = write(two_class_frame((0.5, 1.0)), tmp_path / f"data{suffix}")
    with pytest.raises(UsageError, match=r"row 1's label \('Label'\) is 0.5, a number with a fraction"):
        labelled.load_splits(path, DataOptions(balance=False))


def _with_repeated_column(path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels = [f"message {i}" for i in range(30)], [i % 2 for i in range(30)]
    if path.suffix in (".csv", ".tsv"):
        sep = "," if path.suffix == ".csv" else "\t"
        path.write_text(sep.join(["Text", "Label", "Text"]) + "\n"
                        + "".join(sep.join([t, str(l), "other"]) + "\n" for t, l in zip(texts, labels)))
    elif path.suffix == ".parquet":
        pq.write_table(pa.table([pa.array(texts), pa.array(labels), pa.array(texts)], names=["Text", "Label", "Text"]),
                       path)
    else:
        rows = [f'{{"Text": "{t}", "Label": {l}, "Text": "other"}}' for t, l in zip(texts, labels)]
        path.write_text("[" + ",".join(rows) + "]" if path.suffix == ".json" else "\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_two_columns_of_one_name_are_refused_naming_the_column_and_the_file(tmp_path, suffix):
    path = _with_repeated_column(tmp_path / f"data{suffix}")
    with pytest.raises(UsageError) as raised:
        labelled.load_splits(path, DataOptions(balance=False))
    assert f"--data {path}: two " in str(raised.value) and "named 'Text'; rename one" in str(raised.value)
