"""Knowing before any work which downloads a run needs, and whether they can happen.

An offline first run used to fail three times in a row (data, then weights, then tokenizer), each time
after the hub client's retries (one to two minutes). Instead a command lists what it needs
(`Download`: what, whether a local copy is already there, the flag that replaces it) and calls
`require_downloads`, which

* honours `HF_HUB_OFFLINE=1` (no network at all, as the hub libraries read it),
* otherwise opens one TCP connection per host, bounded to `PROBE_TIMEOUT_S` seconds in total (a thread,
  so a hanging DNS lookup is bounded too; through the HTTPS proxy when one is configured),
* raises one UsageError naming every flag that is needed, and
* when the hub is unreachable but everything needed is cached, switches the hub libraries to offline
  mode so that they read their caches at once instead of retrying.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from unfreeze.errors import UsageError

PROBE_TIMEOUT_S = 3.0
TRUE_WORDS = ("1", "true", "yes", "on")
_probed: dict[tuple[str, int], bool] = {}


@dataclass(frozen=True)
class Download:
    """Something a run fetches from `urls` unless it is `cached`; `fix` is the flag that replaces it."""

    what: str
    urls: tuple[str, ...]
    cached: bool
    fix: str
    hub: bool = False  # fetched by the hub libraries only: offline mode is switched on when the hub is down


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or offline mode already switched on in this process."""
    if any(os.environ.get(name, "").strip().lower() in TRUE_WORDS for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def go_offline() -> None:
    """Make the hub libraries (huggingface_hub, transformers, datasets) use their caches without retrying."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Both read the variable when imported; set the values they already hold too.
    for module, attribute in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                              ("datasets.config", "HF_DATASETS_OFFLINE")):
        if module in sys.modules:
            setattr(sys.modules[module], attribute, True)


def _address(url: str) -> tuple[str, int]:
    """Host and port a connection to `url` goes to: the proxy's when one applies."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or host, proxy_parts.port or 80
    return host, port


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (name lookup included).

    Answers are remembered for the life of the process, so a sweep probes each host once.
    """
    address = _address(url)
    if address in _probed:
        return _probed[address]
    outcome: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # daemon: a stuck lookup never holds the exit
    thread.start()
    thread.join(timeout)
    _probed[address] = bool(outcome and outcome[0])
    return _probed[address]


def any_reachable(urls: Iterable[str]) -> bool:
    return any(reachable(url) for url in urls)


def hub_file_cached(repo_id: str, filenames: Sequence[str], repo_type: str = "model") -> bool:
    """Whether any of `filenames` of a hub repository is in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename, repo_type=repo_type)
        except Exception:  # noqa: BLE001 - an id the hub would reject: not cached, the loader will say why
            return False
        if isinstance(found, str):
            return True
    return False


def unavailable(downloads: Sequence[Download]) -> tuple[list[Download], bool]:
    """(downloads that cannot happen, whether the hub is unreachable); probes only what is not cached."""
    missing = [d for d in downloads if not d.cached and (hub_offline() or not any_reachable(d.urls))]
    hub_down = hub_offline() or (any(d.hub for d in downloads) and not reachable(hub_endpoint()))
    return missing, hub_down


def require_downloads(downloads: Sequence[Download]) -> None:
    """One UsageError naming the flag of every download that cannot happen; else go on (offline mode
    switched on when the hub is unreachable and everything needed from it is cached)."""
    missing, hub_down = unavailable(downloads)
    if missing:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"no connection within {PROBE_TIMEOUT_S:g} s"
        needs = ", ".join(d.what for d in missing)
        raise UsageError(f"offline ({why}) and not cached: {needs}; pass " + ", ".join(d.fix for d in missing))
    if hub_down:
        go_offline()

