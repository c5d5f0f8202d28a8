"""Where models and tokenizers come from: a hub id, a local folder, or (for models) random init.

Every download here is the real Hugging Face download; when it fails (offline machines), the error
says which flag takes a local path instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unfreeze.cache.dropout import set_config_dropout
from unfreeze.errors import UsageError
from unfreeze.models import folder_check
from unfreeze.resources import free_memory_bytes

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


def looks_local(source: str) -> bool:
    """A path rather than a hub id: it exists, starts like a path, or has more parts than 'owner/name'."""
    text = str(source)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def check_model_folder(source: str, flag: str = "--model_size", weights: bool = False) -> None:
    """A local model source must be a folder with a config.json, and complete weights when `weights` (checked
    before anything loads)."""
    if source in GPT2_SIZES or not looks_local(source):
        return
    folder_check.check_model_folder(source, flag, weights, f"copy the weight files into it, or pass {flag} "
                                    f"with another folder (or --weights random)")


def hub_downloads(model_size: str, weights: str, tokenizer: str | None, flag: str = "--model_size") -> list:
    """What loading this model and tokenizer would fetch from the hub (see `unfreeze.offline`)."""
    from unfreeze.offline import Download, hub_endpoint, hub_file_cached

    downloads = []
    model_id = resolve_model_id(model_size)
    if looks_local(model_id) and weights == "pretrained" and not model_id.lower().endswith(".gguf"):
        check_model_folder(model_id, flag, weights=True)  # a folder without (complete) weights: said before work
    if not looks_local(model_id):
        if weights == "pretrained":
            weights_cached = hub_file_cached(model_id, ("model.safetensors", "model.safetensors.index.json",
                                                        "pytorch_model.bin"))
            config_cached = model_id in GPT2_HUB_ARCH or hub_file_cached(model_id, ("config.json",))
            downloads.append(Download(f"the weights of {model_id}", (hub_endpoint(),), weights_cached and config_cached,
                                      f"{flag} FOLDER (or --weights random)", hub=True))
        elif model_id not in GPT2_HUB_ARCH:
            downloads.append(Download(f"the config of {model_id}", (hub_endpoint(),),
                                      hub_file_cached(model_id, ("config.json",)), f"{flag} FOLDER", hub=True))
    source = tokenizer or model_id
    if not looks_local(source):
        downloads.append(Download(f"the tokenizer of {source}", (hub_endpoint(),),
                                  hub_file_cached(source, ("tokenizer.json", "vocab.json")), "--tokenizer FOLDER",
                                  hub=True))
    return downloads


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


def load_tokenizer(source: str, flag: str = "--tokenizer", fix: str = ""):
    """A tokenizer from a folder (HF files, or encoder.json+vocab.bpe) or a hub id.

    `fix` is appended to the error when the folder holds no tokenizer (e.g. "; pass --tokenizer FOLDER"
    when `source` is the model folder the user named for another reason).
    """
    from transformers import AutoTokenizer

    folder = Path(source).expanduser()
    no_files = (f"{flag} {source}: no tokenizer files found (expected tokenizer.json, vocab.json+merges.txt "
                f"or encoder.json+vocab.bpe){fix}")
    if folder.is_dir():
        if (folder / "encoder.json").exists() and (folder / "vocab.bpe").exists() and not (
            folder / "tokenizer.json"
        ).exists() and not (folder / "vocab.json").exists():
            return _gpt2_bpe_tokenizer(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise UsageError(no_files) from err
        # transformers 5 builds an EMPTY tokenizer from a model folder without tokenizer files: every
        # text would become zero tokens and the run would train on nothing.
        if len(tokenizer) < 2 or not tokenizer("a b", add_special_tokens=False)["input_ids"]:
            raise UsageError(no_files)
        return tokenizer
    if folder.exists():
        raise UsageError(f"{flag} {source} is a file; pass the folder that holds the tokenizer files")
    if source.startswith((".", "/", "~")) or Path(source).suffix or source.count("/") > 1:
        raise UsageError(f"{flag} {source}: folder does not exist")
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # network, auth, missing repo: all end in the same advice
        raise offline_error("tokenizer", source, flag, err) from None


def gpt2_config(model_id: str, overrides: dict[str, Any], flag: str = "--model_size",
                overrides_flag: str = "--model_config"):
    """The GPT-2 config for a known size without touching the network; else from the hub/folder."""
    from transformers import AutoConfig, GPT2Config

    if model_id in GPT2_HUB_ARCH:
        config = GPT2Config(**GPT2_HUB_ARCH[model_id])
    else:
        check_model_folder(model_id, flag)
        try:
            config = AutoConfig.from_pretrained(model_id)
        except Exception as err:
            if looks_local(model_id):  # a folder whose config.json transformers cannot read
                raise UsageError(f"{flag} {model_id}: unreadable config.json ({str(err).splitlines()[0][:160]})") from None
            raise offline_error("model config", model_id, flag, err) from None
    apply_overrides(config, overrides, overrides_flag)
    check_architecture(config, overrides_flag if overrides else flag)
    return config


def apply_overrides(config, overrides: dict[str, Any], overrides_flag: str = "--model_config") -> None:
    """Set each override on `config`; an unknown key or a value the config rejects is a UsageError."""
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UsageError(f"{overrides_flag} key {key!r} is not a field of {type(config).__name__}")
        try:
            setattr(config, key, value)
        except Exception as err:  # noqa: BLE001 - transformers 5 validates field types on assignment
            raise UsageError(f"{overrides_flag} {key}={value!r}: {str(err).splitlines()[-1].strip()[:160]}") from None


def decoder_config(source: str, overrides: dict[str, Any], flag: str = "--model",
                   overrides_flag: str = "--model_config"):
    """The config of any model source (GPT-2 size name, hub id, folder, or `.gguf` file), overrides applied."""
    from transformers import AutoConfig

    from unfreeze.models.gguf import is_gguf, split_source

    if not is_gguf(source):
        return gpt2_config(source, overrides, flag=flag, overrides_flag=overrides_flag)
    folder, extra = split_source(source, flag)
    try:
        config = AutoConfig.from_pretrained(folder, **extra)
    except Exception as err:  # noqa: BLE001 - a file transformers cannot read as a model
        raise UsageError(f"{flag} {source}: unreadable GGUF file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    apply_overrides(config, overrides, overrides_flag)
    check_architecture(config, overrides_flag if overrides else flag)
    return config


ARCHITECTURE_SIZES = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "num_hidden_layers",
                      "num_attention_heads", "hidden_size", "max_position_embeddings")


def check_architecture(config, flag: str = "--model_config") -> None:
    """Sizes are positive integers and the width splits evenly into heads (else the model cannot be built)."""
    for key in ARCHITECTURE_SIZES:
        value = getattr(config, key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag}: {key} must be a positive integer (got {value!r})")
    width = getattr(config, "n_embd", None) or getattr(config, "hidden_size", None)
    heads = getattr(config, "n_head", None) or getattr(config, "num_attention_heads", None)
    if width and heads and width % heads and getattr(config, "head_dim", None) is None:
        raise UsageError(f"{flag}: the width n_embd={width} is not divisible by n_head={heads}; "
                         f"use e.g. n_embd={heads * max(1, round(width / heads))}")


def gpt2_parameter_count(config) -> int:
    """Parameters of a GPT-2 body: embeddings, and per block attention (4 d^2 + 4 d), MLP (8 d^2 + 5 d)
    and two LayerNorms (4 d), plus the final LayerNorm; the MLP width is 4 d unless n_inner says otherwise."""
    d, inner = config.n_embd, getattr(config, "n_inner", None) or 4 * config.n_embd
    block = (4 * d * d + 4 * d) + (2 * d * inner + inner + d) + 4 * d
    return (config.vocab_size + config.n_positions) * d + config.n_layer * block + 2 * d


def check_fits_in_memory(config, flag: str = "--model_config") -> None:
    """A GPT-2 whose fp32 weights alone exceed the free memory is refused before it is allocated."""
    if getattr(config, "model_type", None) != "gpt2":
        return
    needed, free = 4 * gpt2_parameter_count(config), free_memory_bytes()
    if free is not None and needed > free:
        raise UsageError(f"{flag}: this model has {needed // 4:,} parameters, {needed / 2**30:.1f} GiB in fp32, more "
                         f"than the {free / 2**30:.1f} GiB of free memory; choose a smaller n_embd/n_layer")


def without_dropout(config) -> None:
    """The reference trains with dropout 0.0; that also makes frozen layers deterministic (caching)."""
    set_config_dropout(config, 0.0)


# transformers' "gelu_new" (GPT-2's activation) writes the tanh approximation of GELU as seven elementwise
# operations, each a pass over the MLP's 4x-wide activations forward and more backward; "gelu_pytorch_tanh" is
# the same formula as one fused kernel (equal up to float rounding). The composed form took ~40% of a whole
# `--trainable_layers all` run on the 2-core CPU (benchmarks/profile_all.py).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def fused_activation(config) -> None:
    """Swap a config's composed activation for its fused equivalent (in place), where one exists."""
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) in FUSED_ACTIVATIONS:
            setattr(config, key, FUSED_ACTIVATIONS[getattr(config, key)])


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


def load_causal_lm(source: str, *, dtype: Any = None, random_init: bool = False,
                   overrides: dict[str, Any] | None = None, flag: str = "model") -> nn.Module:
    """A Hugging Face causal LM from a hub id, a folder or a .gguf file; random weights (with config overrides)
    on request."""
    from transformers import AutoModelForCausalLM

    from unfreeze.models.gguf import is_gguf

    dtype = _torch_dtype(dtype)
    if random_init:
        if is_gguf(source):
            raise UsageError(f"{flag} {source}: weights=random needs a hub id or model folder for the architecture, "
                             f"not a .gguf file; use weights=pretrained")
        config = gpt2_config(source, overrides or {}, flag=flag)
        model = AutoModelForCausalLM.from_config(config)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model
    if overrides:
        raise UsageError("model_config overrides need weights=random (pretrained weights fix the architecture)")
    if is_gguf(source):
        return _load_gguf_causal_lm(source, dtype, flag)
    folder = Path(source).expanduser()
    if not folder.is_dir() and source.startswith((".", "/", "~")):
        raise UsageError(f"{flag} {source}: folder does not exist")
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder) if folder.is_dir() else source,
                                                    dtype="auto" if dtype is None else dtype)
    except Exception as err:  # network, auth, missing or corrupt files: one clear line
        first = str(err).splitlines()[0][:200] if str(err) else ""
        hint = "" if folder.is_dir() else "; if this machine is offline, set model to a local folder"
        raise UsageError(f"could not load model {source!r} ({type(err).__name__}: {first}){hint}") from None


def _load_gguf_causal_lm(source: str, dtype: Any, flag: str) -> nn.Module:
    """A .gguf file as a plain dense model: dequantised at load time, so it trains and saves like any other.

    By default transformers keeps the weights packed in GGUF blocks when its matmul kernels are installed
    (then nothing trains), and without them dequantises but leaves its GGUF quantizer on the model, which
    makes `save_pretrained` refuse (checked with transformers 5). An explicit `dequantize=True` makes it drop
    the quantizer itself; removing a quantizer that is still there covers versions that keep it.
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    from unfreeze.models.gguf import split_source

    folder, extra = split_source(source, flag)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **extra, quantization_config=GgufConfig(dequantize=True),
                                                     dtype="auto" if dtype is None else dtype)
    except Exception as err:  # an unsupported architecture, a corrupt file: one clear line
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise UsageError(f"{flag} {source}: could not load the GGUF file ({type(err).__name__}: {first})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def load_causal_lm_tokenizer(source: str, flag: str = "tokenizer", fix: str = ""):
    """The tokenizer of a causal LM: from a .gguf file (its embedded vocabulary), else `load_tokenizer`."""
    from unfreeze.models.gguf import is_gguf, split_source

    if not is_gguf(source):
        return load_tokenizer(source, flag=flag, fix=fix)
    from transformers import AutoTokenizer

    folder, extra = split_source(source, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as err:  # a GGUF without a tokenizer, or one transformers cannot convert
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise UsageError(f"{flag} {source}: could not read the tokenizer of the GGUF file ({type(err).__name__}: "
                         f"{first}); pass a tokenizer folder with tokenizer{fix}") from None
    if len(tokenizer) < 2 or not tokenizer("a b", add_special_tokens=False)["input_ids"]:
        raise UsageError(f"{flag} {source}: the GGUF file holds no usable tokenizer; pass a tokenizer folder{fix}")
    return tokenizer


def _torch_dtype(dtype: Any) -> Any:
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(names)}")
    return names[dtype]
