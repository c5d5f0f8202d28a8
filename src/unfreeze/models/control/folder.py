"""Save and load the folder of a control-token model (the format is described in `control_tokens.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import ADAPTER_DIR, FORMAT, MARKER_FILE, TENSORS_FILE, ControlTokenLM


def write_folder(model: ControlTokenLM, folder: Path) -> None:
    """Every file of a saved control-token model; `control_tokens.json` last (it marks the folder complete)."""
    from safetensors.torch import save_file

    from unfreeze.files import atomic_write_json

    folder.mkdir(parents=True)
    model.hf_model.save_pretrained(folder, state_dict=base_state_dict(model.hf_model))
    if model.has_lora:
        # save_embedding_layers=False: "auto" would look the base model up on the hub.
        model.base.save_pretrained(folder / ADAPTER_DIR, save_embedding_layers=False)
    model.tokenizer.save_pretrained(folder)
    tensors = {}
    if model.control_embeddings is not None:
        tensors = {"control_embeddings": model.control_embeddings,
                   "pause_head.weight": model.pause_head.weight, "pause_head.bias": model.pause_head.bias}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / TENSORS_FILE))
    atomic_write_json(folder / MARKER_FILE, {
        "format": FORMAT, "version": 1, "control_tokens": model.control_tokens,
        "control_token_ids": model.control_token_ids, "base_vocab_size": model.base_vocab_size,
        "detach_head": model.detach_head, "lora": model.has_lora, "pause_tokenization": model.pause_tokenization,
    })


def base_state_dict(hf_model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in plain Hugging Face form: LoRA layers contribute their base layer only.

    Walks the module tree (no key-name surgery): a peft LoRA layer is replaced by its `base_layer`, under
    the LoRA layer's own name, so the keys are those of the original model.
    """
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if isinstance(module, LoraLayer):
            module = module.base_layer
        for name, param in module._parameters.items():
            if param is not None:
                state[prefix + name] = param.detach()
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                state[prefix + name] = buffer.detach()
        for name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(hf_model, "")
    return state


def load_folder(cls: type[ControlTokenLM], folder: Path, *, dtype: Any, merge_adapter: bool,
                pause_tokenization: str | None = None) -> ControlTokenLM:
    """Rebuild a folder written by `save_pretrained`; any inconsistency is a one-line UsageError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from unfreeze.models.loading import ModelSource

    try:
        meta = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        tokens, ids = list(meta["control_tokens"]), list(meta["control_token_ids"])
        detach_head = bool(meta.get("detach_head", True))
        # Folders saved before the key existed registered their tokens without strip flags: "exact".
        pause_tokenization = pause_tokenization or str(meta.get("pause_tokenization", "exact"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"model folder {folder}: {MARKER_FILE} is corrupt ({type(err).__name__}: {err})") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"model folder {folder}: {MARKER_FILE} is not an unfreeze control-token file")
    source = ModelSource(str(folder), flag="model")
    base = source.load("causal_lm", dtype=dtype)
    tokenizer = source.load_tokenizer()
    if (folder / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        try:
            base = PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR), is_trainable=False)
        except Exception as err:
            raise UsageError(f"model folder {folder}: cannot load {ADAPTER_DIR}/ ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]})") from None
        if merge_adapter:
            base = base.merge_and_unload()
    model = cls(base, tokenizer, tokens, detach_head, pause_tokenization)
    if model.control_token_ids != ids:
        raise UsageError(f"model folder {folder}: tokenizer ids {model.control_token_ids} of {tokens} differ "
                         f"from the saved ids {ids}")
    try:
        saved = load_file(str(folder / TENSORS_FILE))
    except (OSError, SafetensorError) as err:
        raise UsageError(f"model folder {folder}: cannot read {TENSORS_FILE} ({err})") from None
    own = {}
    if model.control_embeddings is not None:
        own = {"control_embeddings": model.control_embeddings,
               "pause_head.weight": model.pause_head.weight, "pause_head.bias": model.pause_head.bias}
    if set(saved) != set(own):
        raise UsageError(f"model folder {folder}: {TENSORS_FILE} holds {sorted(saved)}, expected {sorted(own)}")
    with torch.no_grad():
        for name, param in own.items():
            if saved[name].shape != param.shape:
                raise UsageError(f"model folder {folder}: {name} has shape {tuple(saved[name].shape)}, "
                                 f"expected {tuple(param.shape)}")
            param.copy_(saved[name])
    return model
