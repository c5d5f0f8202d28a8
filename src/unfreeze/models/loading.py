"""The one model loader: a hub id, a local folder, a `.gguf` file or a GPT-2 size name, pretrained or random.

Every recipe builds a `ModelSource` once from its options and asks it for everything else: the checks that
need no download (`check`), what would be downloaded (`downloads`), the configuration with its overrides
(`config`), the model itself (`load`: a base model for classify, a causal LM for sft and eval-gsm8k) and
its tokenizer. Every download is the real Hugging Face download; when one fails (offline machines) the
error names the flag that takes a local path instead.

GGUF files (llama.cpp, ollama) are dequantised at load time and the GGUF quantizer is taken off the model,
so they train and save like any other model: by default transformers keeps GGUF weights packed in blocks
when its matmul kernels are installed (then nothing trains), and without them dequantises but leaves its
quantizer on the model, which makes `save_pretrained` refuse (checked with transformers 5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models import folder_check, model_config
from unfreeze.models.dropout import set_config_dropout
from unfreeze.models.gguf import is_gguf, resolve_alias, split_source
from unfreeze.models.tokenizers import load_tokenizer, offline_error

# `load(head=...)`: which transformers auto class builds the model.
HEADS = {"base": "AutoModel", "causal_lm": "AutoModelForCausalLM"}


def looks_local(source: str) -> bool:
    """A path rather than a hub id: it exists, starts like a path, or has more parts than 'owner/name'."""
    text = str(source)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def check_model_folder(source: str, flag: str = "--model_size", weights: bool = False,
                       random_flag: str = "--weights random") -> None:
    """A local model source is a folder with a config.json, and complete weights when `weights` (checked from
    file names and headers before anything loads: `folder_check`); a hub id or GPT-2 size name passes."""
    if source in model_config.GPT2_SIZES or not looks_local(source):
        return
    folder_check.check_model_folder(source, flag, weights,
                                    f"copy the weight files into it, or pass {flag} with another folder "
                                    f"(or {random_flag})")


@dataclass(frozen=True)
class ModelSource:
    """A model as the user named it, and how to name each setting back to them in messages."""

    name: str  # a hub id, a local folder, a .gguf file, or a GPT-2 size name ("gpt2-small (124M)")
    flag: str = "--model"
    weights: str = "pretrained"  # or "random": the architecture of `name`, transformers' initialisation
    overrides: dict = dataclasses.field(default_factory=dict)  # --model_config, parsed
    overrides_flag: str = "--model_config"
    tokenizer: str | None = None  # default: the model's own
    tokenizer_flag: str = "--tokenizer"

    @property
    def location(self) -> str:
        """What `from_pretrained` is given: GPT-2 size names become hub ids, `smollm2` the installed GGUF file."""
        return resolve_alias(model_config.resolve_model_id(self.name), self.flag)

    @property
    def random(self) -> bool:
        return self.weights == "random"

    def setting(self, key: str, value: str) -> str:
        """How the user writes another setting, in the style of `flag`: `--weights random` or `weights=random`."""
        return f"--{key} {value}" if self.flag.startswith("--") else f"{key}={value}"

    # --- before any work ----------------------------------------------------------------------------------
    def check(self) -> None:
        """What can be checked without loading: the folder or file exists, the GGUF can be read, and overrides
        of the architecture come with random weights (pretrained weights fix it; dropout rates may change)."""
        if not str(self.name).strip():
            raise UsageError(f"{self.flag} is empty; give a hub id, a folder or a .gguf file")
        if is_gguf(self.location):
            split_source(self.location, self.flag)
        else:  # a folder without (complete) weights is named here when the run needs them
            check_model_folder(self.location, self.flag, weights=not self.random,
                               random_flag=self.setting("weights", "random"))
        if not self.random:
            changed = sorted(k for k in self.overrides if not k.endswith(("dropout", "pdrop")))
            if changed:
                raise UsageError(f"{self.overrides_flag} sets {', '.join(changed)}: architecture overrides need "
                                 "random weights (pretrained weights fix the architecture)")

    def downloads(self) -> list:
        """What loading this model and its tokenizer would fetch from the hub (see `unfreeze.offline`)."""
        from unfreeze.offline import Download, hub_endpoint, hub_file_cached

        downloads, model_id = [], self.location
        if not looks_local(model_id):
            if not self.random:
                weights_cached = hub_file_cached(model_id, ("model.safetensors", "model.safetensors.index.json",
                                                            "pytorch_model.bin"))
                config_cached = model_id in model_config.GPT2_HUB_ARCH or hub_file_cached(model_id, ("config.json",))
                downloads.append(Download(f"the weights of {model_id}", (hub_endpoint(),),
                                          weights_cached and config_cached, f"{self.flag} FOLDER (or {self.setting('weights', 'random')})",
                                          hub=True))
            elif model_id not in model_config.GPT2_HUB_ARCH:
                downloads.append(Download(f"the config of {model_id}", (hub_endpoint(),),
                                          hub_file_cached(model_id, ("config.json",)), f"{self.flag} FOLDER", hub=True))
        source = self.tokenizer or model_id
        if not looks_local(source):
            downloads.append(Download(f"the tokenizer of {source}", (hub_endpoint(),),
                                      hub_file_cached(source, ("tokenizer.json", "vocab.json")),
                                      f"{self.tokenizer_flag} FOLDER", hub=True))
        return downloads

    # --- configuration -----------------------------------------------------------------------------------
    def config(self, *, dropout: float | None = None, fused_activation: bool = False,
               attn_implementation: str | None = None):
        """The model's config with `--model_config` applied and checked; nothing is allocated.

        `dropout` sets every dropout rate; `fused_activation` swaps GPT-2's seven-op GELU for the same formula
        as one kernel; `attn_implementation` is passed to transformers (None: its own choice).
        """
        from transformers import AutoConfig, GPT2Config

        model_id = self.location
        if model_id in model_config.GPT2_HUB_ARCH:  # the known sizes need no download for their config
            config = GPT2Config(**model_config.GPT2_HUB_ARCH[model_id])
        else:
            if not is_gguf(model_id):
                check_model_folder(model_id, self.flag)
            folder, extra = split_source(model_id, self.flag)
            try:
                config = AutoConfig.from_pretrained(folder, **extra)
            except Exception as err:  # noqa: BLE001 - a file or folder transformers cannot read as a model
                if is_gguf(model_id):
                    raise UsageError(f"{self.flag} {self.name}: unreadable GGUF file ({type(err).__name__}: "
                                     f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
                if looks_local(model_id):
                    raise UsageError(f"{self.flag} {model_id}: unreadable config.json "
                                     f"({str(err).splitlines()[0][:160]})") from None
                raise offline_error("model config", model_id, self.flag, err) from None
        model_config.apply_overrides(config, self.overrides, self.overrides_flag)
        model_config.check_architecture(config, self.overrides_flag if self.overrides else self.flag)
        if dropout is not None:
            set_config_dropout(config, dropout)
        if fused_activation:
            model_config.fused_activation(config)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return config

    # --- the model ---------------------------------------------------------------------------------------
    def load(self, head: str = "base", config=None, dtype: Any = None, seed: int | None = None) -> nn.Module:
        """The model: `head` "base" (AutoModel) or "causal_lm" (AutoModelForCausalLM).

        Random weights use transformers' initialisation, seeded with `seed` when given; pretrained weights
        are loaded in `dtype` (None: as stored, fp32 for GGUF files, which are dequantised).
        """
        import transformers

        auto = getattr(transformers, HEADS[head])
        config = config if config is not None else self.config()
        dtype = torch_dtype(dtype)
        if self.random:
            if seed is not None:
                torch.manual_seed(seed)
            model = auto.from_config(config)
            return model.to(dtype) if isinstance(dtype, torch.dtype) else model
        folder, extra = split_source(self.location, self.flag)
        if extra:  # a .gguf file: dequantised (see the module docstring)
            extra["quantization_config"] = transformers.GgufConfig(dequantize=True)
            dtype = torch.float32 if dtype is None else dtype
        try:
            model = auto.from_pretrained(str(Path(folder).expanduser()) if looks_local(folder) else folder,
                                         config=config, dtype="auto" if dtype is None else dtype, **extra)
        except Exception as err:  # noqa: BLE001 - network, auth, missing or corrupt files: one clear line
            if is_gguf(self.location):
                raise UsageError(f"{self.flag} {self.name}: could not load the GGUF file ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
            if looks_local(self.location):  # a folder that is there: its files are the problem, not the network
                raise UsageError(f"{self.flag} {self.name}: could not load model from this folder "
                                 f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
            raise offline_error("pretrained weights", self.name, f"{self.flag} (or {self.setting('weights', 'random')})",
                                err) from None
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        return model

    def load_tokenizer(self):
        """The tokenizer: the tokenizer option, else the model's own (a .gguf file carries one)."""
        if self.tokenizer:
            return load_tokenizer(self.tokenizer, flag=self.tokenizer_flag)
        return load_tokenizer(self.location, flag=self.flag, fix=f"; pass {self.tokenizer_flag} FOLDER")


def torch_dtype(dtype: Any) -> Any:
    """A dtype as configs spell it ('bf16', 'float32', 'auto', a torch.dtype) -> torch's (or None/'auto')."""
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(names)}")
    return names[dtype]
