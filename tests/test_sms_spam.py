import pandas as pd
import pytest

from unfreeze.data import sms_spam
from unfreeze.errors import UsageError

from conftest import make_spam_rows


def test_reference_split_sizes_and_label_counts(shared_data):
    splits = sms_spam.load_splits(str(shared_data / "sms_spam" / "SMSSpamCollection"))
    counts = [frame["Label"].value_counts().to_dict() for frame in (splits.train, splits.validation, splits.test)]
    assert splits.sizes() == {"train": 1045, "validation": 149, "test": 300}
    assert counts == [{0: 530, 1: 515}, {0: 76, 1: 73}, {0: 141, 1: 159}]


def _write_collection(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")


def test_balanced_split_is_balanced_and_ordered_70_10_20(tmp_path):
    rows = make_spam_rows(60) + [("ham", f"extra ham {i}") for i in range(40)]
    _write_collection(tmp_path / "SMSSpamCollection", rows)
    splits = sms_spam.load_splits(str(tmp_path / "SMSSpamCollection"))
    n_spam = sum(label == "spam" for label, _ in rows)
    total = 2 * n_spam
    assert splits.sizes() == {"train": int(total * 0.7), "validation": int(total * 0.1),
                              "test": total - int(total * 0.7) - int(total * 0.1)}
    labels = pd.concat([splits.train, splits.validation, splits.test])["Label"]
    assert labels.sum() == n_spam and (labels == 0).sum() == n_spam
    # Deterministic: a second load gives the same split.
    again = sms_spam.load_splits(str(tmp_path / "SMSSpamCollection"))
    assert again.train["Text"].tolist() == splits.train["Text"].tolist()


@pytest.mark.parametrize("content, message", [
    ("hello world\nno tabs here\n", "expected lines"),
    ("spam\tWIN\nspam\tCASH\nham\thi\n", "at least as many ham"),
])
def test_malformed_collection_is_a_usage_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        sms_spam.load_splits(str(path))


def test_missing_data_and_empty_split_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        sms_spam.load_splits(str(tmp_path / "absent"))
    folder = tmp_path / "csvs"
    folder.mkdir()
    for name in ("train", "validation"):
        pd.DataFrame({"Label": [0, 1], "Text": ["a", "b"]}).to_csv(folder / f"{name}.csv", index=False)
    pd.DataFrame({"Label": [], "Text": []}).to_csv(folder / "test.csv", index=False)
    with pytest.raises(UsageError, match="test split is empty"):
        sms_spam.load_splits(str(folder))


def test_download_failure_names_the_offline_flag(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sms_spam.urllib.request, "urlopen", refuse)
    with pytest.raises(UsageError, match="--data"):
        sms_spam.download(tmp_path / "SMSSpamCollection")
    assert not (tmp_path / "SMSSpamCollection").exists()


def test_tiny_splits_are_warned_about_and_empty_ones_refused(tmp_path):
    rows = make_spam_rows(12)  # 6 spam: 12 balanced messages cut 70/10/20 -> 8 / 1 / 3
    _write_collection(tmp_path / "small", rows)
    splits = sms_spam.load_splits(str(tmp_path / "small"))
    assert splits.sizes() == {"train": 8, "validation": 1, "test": 3}
    warnings = sms_spam.small_split_warnings(splits)
    assert len(warnings) == 1 and "validation split has only 1 example" in warnings[0]
    _write_collection(tmp_path / "tiny", make_spam_rows(8))  # 4 spam: the validation split would be empty
    with pytest.raises(UsageError, match="4 spam messages are too few"):
        sms_spam.load_splits(str(tmp_path / "tiny"))
    assert sms_spam.small_split_warnings(sms_spam.load_splits(str(tmp_path / "small")))
    _write_collection(tmp_path / "enough", make_spam_rows(20))
    assert sms_spam.small_split_warnings(sms_spam.load_splits(str(tmp_path / "enough"))) == []


def test_spam_free_file_says_so(tmp_path):
    _write_collection(tmp_path / "ham_only", [("ham", "hello")] * 10)
    with pytest.raises(UsageError, match="no spam messages"):
        sms_spam.load_splits(str(tmp_path / "ham_only"))
