"""Where models and tokenizers come from: a hub id, a local folder, or (for models) random init.

Every download here is the real Hugging Face download; when it fails (offline machines), the error
says which flag takes a local path instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unfreeze.cache.dropout import set_config_dropout
from unfreeze.errors import UsageError

# The reference script's size names -> Hugging Face hub ids and architectures (GPT-2 paper, Table 2).
GPT2_SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "gpt2-small (124M)": ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12}),
    "gpt2-medium (355M)": ("gpt2-medium", {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    "gpt2-large (774M)": ("gpt2-large", {"n_embd": 1280, "n_layer": 36, "n_head": 20}),
    "gpt2-xl (1558M)": ("gpt2-xl", {"n_embd": 1600, "n_layer": 48, "n_head": 25}),
}
GPT2_HUB_ARCH = {hub_id: arch for hub_id, arch in GPT2_SIZES.values()}


def resolve_model_id(model_size: str) -> str:
    """'gpt2-small (124M)' -> 'gpt2'; a hub id or a local folder is returned unchanged."""
    if model_size in GPT2_SIZES:
        return GPT2_SIZES[model_size][0]
    return model_size


def parse_model_config(text: str | dict | None, flag: str = "--model_config") -> dict[str, Any]:
    """JSON architecture overrides, e.g. '{"n_layer":2,"n_embd":128,"n_head":4}'."""
    if text in (None, "", "null", "None"):
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not valid JSON ({err.msg}); example: '{{\"n_layer\":2,\"n_embd\":128}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object such as '{{\"n_layer\":2}}', got {text!r}")
    return value


def offline_error(what: str, source: str, flag: str, err: Exception) -> UsageError:
    return UsageError(
        f"could not load {what} {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
        f"if this machine is offline, pass a local folder with {flag}"
    )


def _gpt2_bpe_tokenizer(folder: Path):
    """OpenAI's original files: encoder.json (= vocab.json) and vocab.bpe (= merges.txt)."""
    from transformers import GPT2TokenizerFast

    vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]
    # transformers 5: vocab_file=/merges_file= would silently build an EMPTY tokenizer; pass the data.
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    if len(tokenizer) < 2:
        raise UsageError(f"tokenizer files in {folder} produced an empty vocabulary")
    return tokenizer


def load_tokenizer(source: str, flag: str = "--tokenizer"):
    """A tokenizer from a folder (HF files, or encoder.json+vocab.bpe) or a hub id."""
    from transformers import AutoTokenizer

    folder = Path(source).expanduser()
    if folder.is_dir():
        if (folder / "encoder.json").exists() and (folder / "vocab.bpe").exists() and not (
            folder / "tokenizer.json"
        ).exists() and not (folder / "vocab.json").exists():
            return _gpt2_bpe_tokenizer(folder)
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise UsageError(
                f"{flag} {source}: no tokenizer files found (expected tokenizer.json, vocab.json+merges.txt "
                f"or encoder.json+vocab.bpe)"
            ) from err
    if source.startswith((".", "/", "~")) or Path(source).suffix:
        raise UsageError(f"{flag} {source}: folder does not exist")
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # network, auth, missing repo: all end in the same advice
        raise offline_error("tokenizer", source, flag, err) from None


def gpt2_config(model_id: str, overrides: dict[str, Any], flag: str = "--model_size"):
    """The GPT-2 config for a known size without touching the network; else from the hub/folder."""
    from transformers import AutoConfig, GPT2Config

    if model_id in GPT2_HUB_ARCH:
        config = GPT2Config(**GPT2_HUB_ARCH[model_id])
    else:
        try:
            config = AutoConfig.from_pretrained(model_id)
        except Exception as err:
            raise offline_error("model config", model_id, flag, err) from None
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UsageError(f"--model_config key {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)
    return config


def without_dropout(config) -> None:
    """The reference trains with dropout 0.0; that also makes frozen layers deterministic (caching)."""
    set_config_dropout(config, 0.0)


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was requested but MPS is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or mps") from None
