"""An offline first run fails at once, naming every flag it needs, instead of in three slow rounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from unfreeze import offline
from unfreeze.config import config_from_mapping
from unfreeze.errors import UsageError
from unfreeze.offline import require_downloads
from unfreeze.recipes.classify.inputs import downloads
from unfreeze.recipes.classify.config import ClassifyConfig

ALL_FLAGS = ("--data PATH/SMSSpamCollection", "--model_size FOLDER (or --weights random)", "--tokenizer FOLDER")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No unfreeze data cache, no hub cache, and the hub's offline switch off (as on a user's laptop)."""
    import huggingface_hub.constants

    monkeypatch.setenv("UNFREEZE_CACHE", str(tmp_path / "unfreeze-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_unreachable_network_names_every_missing_download_in_one_line(empty_caches, monkeypatch):
    probed = []
    monkeypatch.setattr(offline, "reachable", lambda url, timeout=3.0: probed.append(url) or False)
    with pytest.raises(UsageError) as caught:
        require_downloads(downloads(ClassifyConfig(data="sms_spam:download", out=str(empty_caches / "x"))))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("offline (no connection within 3 s)")
    assert all(flag in message for flag in ALL_FLAGS), message
    assert any("huggingface.co" in url for url in probed) and any("uci.edu" in url for url in probed)


def test_hf_hub_offline_fails_without_probing(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "reachable", lambda *a, **k: pytest.fail("probed although HF_HUB_OFFLINE=1"))
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set") as caught:
        # the tokenizer and the data are still needed
        require_downloads(downloads(ClassifyConfig(weights="random", data="sms_spam:download")))
    message = str(caught.value)
    assert "--tokenizer FOLDER" in message and "--data" in message and "--model_size" not in message


def test_local_inputs_need_no_network(empty_caches, monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "reachable", lambda *a, **k: pytest.fail("probed for local inputs"))
    (tmp_path / "tok").mkdir()
    cfg = ClassifyConfig(weights="random", data=str(tmp_path / "SMSSpamCollection"), tokenizer=str(tmp_path / "tok"))
    require_downloads(downloads(cfg))  # gpt2-small's architecture is known: no config download either


def _cache_hub_file(hub: str, repo: str, filename: str) -> None:
    folder = os.path.join(hub, f"models--{repo}")
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as handle:
        handle.write("0" * 40)
    os.makedirs(os.path.join(folder, "snapshots", "0" * 40), exist_ok=True)
    open(os.path.join(folder, "snapshots", "0" * 40, filename), "w").close()


def test_cached_downloads_switch_the_hub_libraries_offline_instead_of_retrying(empty_caches, monkeypatch):
    import huggingface_hub.constants

    hub = huggingface_hub.constants.HF_HUB_CACHE
    _cache_hub_file(hub, "gpt2", "model.safetensors")
    _cache_hub_file(hub, "gpt2", "tokenizer.json")
    (empty_caches / "unfreeze-cache" / "sms_spam").mkdir(parents=True)
    (empty_caches / "unfreeze-cache" / "sms_spam" / "SMSSpamCollection").write_text("ham\thi\n")
    monkeypatch.setattr(offline, "reachable", lambda *a, **k: False)
    require_downloads(downloads(ClassifyConfig(data="sms_spam:download")))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"


def test_reachable_is_a_bounded_tcp_connect(monkeypatch):
    monkeypatch.setattr(offline, "_probed", {})
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert offline.reachable(f"https://127.0.0.1:{port}/x", timeout=2)
    assert offline.reachable(f"https://127.0.0.1:{port}/x")  # remembered: the closed server is not probed again
    start = time.perf_counter()
    assert not offline.reachable("https://127.0.0.1:9/", timeout=2)  # nothing listens on the discard port
    assert time.perf_counter() - start < 3


def test_default_data_is_shipped_so_only_the_model_and_tokenizer_are_missing(empty_caches, monkeypatch):
    monkeypatch.setattr(offline, "reachable", lambda url, timeout=3.0: False)
    with pytest.raises(UsageError) as caught:
        require_downloads(downloads(ClassifyConfig(out=str(empty_caches / "x"))))
    assert "--data" not in str(caught.value) and all(flag in str(caught.value) for flag in ALL_FLAGS[1:])


def test_first_offline_run_fails_fast_with_every_flag(tmp_path):
    """The real thing: no HF_HUB_OFFLINE, empty caches, and this machine's (absent) network."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(UNFREEZE_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"), PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "unfreeze", "classify", "--data", "sms_spam:download",
                             "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - started
    lines = result.stderr.strip().splitlines()
    if "no connection" not in result.stderr:
        pytest.skip(f"this machine reaches the network: {result.stderr[-200:]}")
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert all(flag in lines[0] for flag in ALL_FLAGS), lines[0]
    assert seconds < 20, seconds
    assert not (tmp_path / "x").exists()


def test_config_from_mapping_accepts_overwrite():
    assert config_from_mapping(ClassifyConfig, {"overwrite": True}).overwrite is True


def test_a_hanging_name_lookup_is_cut_off_at_the_timeout(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)  # what a resolver without network can do for much longer
        raise OSError("timed out")

    monkeypatch.setattr(offline, "_probed", {})
    monkeypatch.setattr(offline.socket, "create_connection", hang)
    start = time.perf_counter()
    assert not offline.reachable("https://huggingface.co", timeout=0.3)
    assert time.perf_counter() - start < 1.5
