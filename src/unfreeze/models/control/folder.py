"""Save and load the folder of a control-token model (the format is described in `control_tokens.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import ADAPTER_DIR, FORMAT, MARKER_FILE, TENSORS_FILE, ControlTokenLM


def write_folder(model: ControlTokenLM, folder: Path, card: str | None = None) -> None:
    """Every file of a saved control-token model; `control_tokens.json` last (it marks the folder complete).

    The weights are those of a plain causal LM of V + n tokens (`plain_state_dict`): the control tokens' trained
    rows appended to the input embeddings, zero rows to an untied LM head, and `suppress_tokens` in
    generation_config.json, so `AutoModelForCausalLM.from_pretrained(folder)` generates as the pause model does
    with its pause head switched off. `ControlTokenLM.from_pretrained` cuts the matrices back to V rows (folders
    saved before held V rows; both load)."""
    from safetensors.torch import save_file

    from unfreeze.files import atomic_write_json, atomic_write_text

    folder.mkdir(parents=True)
    model.hf_model.save_pretrained(folder, state_dict=plain_state_dict(model))
    if model.control_embeddings is not None:
        _declare_control_rows(folder, model.vocab_size, model.control_token_ids)
    if card is not None:
        atomic_write_text(folder / "README.md", card)
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
        "plain_vocab_size": model.vocab_size,  # the rows of the saved matrices (base + control tokens)
    })


def plain_state_dict(model: ControlTokenLM) -> dict[str, torch.Tensor]:
    """`base_state_dict` with the control tokens' rows appended: their trained (delta) embeddings to the input
    embedding matrix, zeros to an untied LM head (and its bias): what the pause model's LM computes for every
    normal token, as a plain model of V + n tokens."""
    hf = model.hf_model
    state = base_state_dict(hf)
    if model.control_embeddings is None:
        return state
    names = {id(module): name for name, module in hf.named_modules()}
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    key = f"{names[id(embedding)]}.weight"
    rows = model.control_embeddings.detach().to(state[key].dtype)
    state[key] = torch.cat([state[key], rows])
    for name, param in head.named_parameters():
        head_key = f"{names[id(head)]}.{name}"
        if param is embedding.weight:
            state[head_key] = state[key]  # tied: one matrix (transformers saves it once)
        else:
            state[head_key] = torch.cat([state[head_key], state[head_key].new_zeros((len(rows), *param.shape[1:]))])
    return state


def _declare_control_rows(folder: Path, rows: int, control_ids: list[int]) -> None:
    """config.json says the matrices' V + n rows; generation_config.json suppresses the control tokens (the LM
    head has no real row for them: the pause head decides pauses)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    config.get_text_config().vocab_size = rows
    if config.get_text_config() is not config:
        config.vocab_size = rows
    config.save_pretrained(folder)
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    generation.suppress_tokens = list(control_ids)
    generation.save_pretrained(folder)


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
    if base.get_input_embeddings().weight.shape[0] > int(meta["base_vocab_size"]):
        base.resize_token_embeddings(int(meta["base_vocab_size"]))  # the control rows come from TENSORS_FILE
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
