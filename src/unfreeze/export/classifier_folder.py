"""classify's `<out>/final/`: the trained classifier as plain `transformers` loads it.

    final/            AutoModelForSequenceClassification: config (num_labels, id2label / label2id from the data's
                      classes, pad_token_id), the weights (LoRA merged in), the tokenizer with its pad token,
                      README.md (the model card)
    final/adapter/    LoRA runs on pretrained weights: a PEFT adapter over the base model, with the head (and GPT-2's
                      final norm, see below) in modules_to_save: `PeftModel.from_pretrained(base, final/adapter)`

The head is the architecture's own classification head (`score`). Every model but GPT-2 trains transformers'
bias-free head already. GPT-2 keeps the reference's head, whose bias `score` has no room for; the final norm
(`ln_f`) feeds only the head in a sequence classifier and has a bias, so the head's bias b is moved there: its
bias gains δ with W δ = b (least squares, exact up to rounding for a head of full row rank), and
W (h + δ) = W h + b for every hidden state h.

The adapter is peft's own save of a peft model rebuilt from the run's updates. A layer with several updates
(the reference layout on GPT-2's fused c_attn: three) has no peft form, so those runs save the merged model
only (merging is exact: the update is linear). The folder is written beside its place and renamed into it
whole (`files.staged_folder`): a run killed while saving leaves the previous folder or none.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from unfreeze.errors import UsageError
from unfreeze.files import atomic_write_text, staged_folder
from unfreeze.models import lora as lora_lib
from unfreeze.models.classifier import DecoderClassifier
from unfreeze.models.trainable import model_parts

ADAPTER_DIR = "adapter"


def sequence_classifier_config(model: DecoderClassifier, class_names: list[str]):
    """The body's config as a sequence classifier's: its classes, and the token the run padded with."""
    config = copy.deepcopy(model.body.config)
    config.num_labels = len(class_names)
    config.id2label = {i: str(name) for i, name in enumerate(class_names)}
    config.label2id = {str(name): i for i, name in enumerate(class_names)}
    config.pad_token_id = int(model.pad_token_id)
    config.architectures = None
    return config


def _meta_classifier(config):
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def _names(hf) -> tuple[str, str, str]:
    """(base-model prefix, the head's name, the final norm's name) in the transformers classifier."""
    parts = model_parts(hf)
    named = {id(module): name for name, module in hf.named_modules()}
    return hf.base_model_prefix, named[id(parts.output)], named[id(parts.structure.final_norm)]


def fold_head_bias(weight: torch.Tensor, bias: torch.Tensor, norm_bias: torch.Tensor | None) -> torch.Tensor:
    """The final norm's bias that carries the head's bias: norm_bias + δ with weight @ δ = bias."""
    if norm_bias is None:
        raise UsageError("the classifier's head has a bias but the model's final norm has none to carry it; "
                         "transformers' classification head has no bias")
    delta = torch.linalg.pinv(weight.double()) @ bias.double()
    gap = (weight.double() @ delta - bias.double()).abs().max().item()
    if gap > 1e-6 * max(1.0, bias.abs().max().item()):
        raise UsageError(f"the head's bias cannot be moved into the final norm (rank-deficient head, gap {gap:.2g})")
    return (norm_bias.double() + delta).to(norm_bias.dtype)


def classifier_state(model: DecoderClassifier, hf, merged: bool = True) -> dict[str, torch.Tensor]:
    """`model`'s weights under the transformers classifier's names (LoRA merged unless `merged` is False; the
    head always merged, its bias moved into the final norm)."""
    prefix, head, norm = _names(hf)
    state = {f"{prefix}.{k}": v for k, v in lora_lib.plain_state_dict(model.body, merged=merged).items()}
    head_state = lora_lib.plain_state_dict(model.head)
    state[f"{head}.weight"] = head_state["weight"]
    if "bias" in head_state:
        key = f"{norm}.bias"
        state[key] = fold_head_bias(head_state["weight"], head_state["bias"], state.get(key))
    expected = set(hf.state_dict())
    if set(state) != expected:
        raise RuntimeError(f"classifier weights do not match {type(hf).__name__}: "
                           f"{sorted(set(state) ^ expected)[:4]}")
    return {k: v.detach().contiguous() for k, v in state.items()}


def prepare_tokenizer(tokenizer, pad_token_id: int):
    """The tokenizer, padding with the run's pad token where it has that id."""
    if 0 <= pad_token_id < len(tokenizer):
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    return tokenizer


def write_adapter(model: DecoderClassifier, config, folder: Path, base_model: str | None) -> str | None:
    """`folder` = a PEFT adapter equal to the run's LoRA over the unmerged base; returns why not, or None."""
    from peft import LoraConfig, get_peft_model

    layers = lora_lib.adapted_layers(model.body)
    fused = [name for name, factors in layers.items() if len(factors) > 1]
    if fused:
        return (f"{fused[0]} has {len(layers[fused[0]])} LoRA updates (the reference layout on a fused projection), "
                "which a PEFT adapter cannot hold: only the merged model is saved")
    kinds = {(factors[0][0].shape[1], factors[0][2]) for factors in layers.values()}
    rank, scale = next(iter(kinds))
    hf = _meta_classifier(config)
    prefix, head, norm = _names(hf)
    hf.load_state_dict(classifier_state(model, hf, merged=False), assign=True)
    head_bias = "bias" in lora_lib.plain_state_dict(model.head)
    saved = [head, *([norm] if head_bias else [])]  # GPT-2's final norm carries the head's bias
    transposed = {name for name, module in model.body.named_modules()
                  if isinstance(getattr(module, "base_layer", module), Conv1D)}
    lora_config = LoraConfig(r=rank, lora_alpha=scale * rank, lora_dropout=0.0, bias="none", task_type="SEQ_CLS",
                             target_modules=[f"{prefix}.{name}" for name in layers], modules_to_save=saved,
                             fan_in_fan_out=bool(transposed & set(layers)), base_model_name_or_path=base_model)
    peft_model = get_peft_model(hf, lora_config)
    with torch.no_grad():
        for name, ((a, b, _),) in layers.items():
            layer = peft_model.base_model.model.get_submodule(f"{prefix}.{name}")
            layer.lora_A["default"].weight.copy_(a.T)
            layer.lora_B["default"].weight.copy_(b.T)
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    return None


def save_classifier(model: DecoderClassifier, folder: Path, *, class_names: list[str], tokenizer, card: str,
                    base_model: str | None, pretrained: bool) -> dict:
    """Write `folder` (see the module docstring) atomically; returns what was saved, for metrics.json."""
    config = sequence_classifier_config(model, class_names)
    adapter_note = None
    with staged_folder(Path(folder)) as staging:
        hf = _meta_classifier(config)
        hf.save_pretrained(str(staging), state_dict=classifier_state(model, hf))
        prepare_tokenizer(tokenizer, model.pad_token_id).save_pretrained(str(staging))
        if lora_lib.adapted_layers(model.body):
            adapter_note = (write_adapter(model, config, staging / ADAPTER_DIR, base_model) if pretrained else
                            "random base weights are not saved, so a PEFT adapter over them could not be used: "
                            "only the merged model is saved")
        atomic_write_text(staging / "README.md", card + (f"\n## Adapter\n\n{adapter_note}\n" if adapter_note else ""))
    return {"path": str(folder), "adapter": (Path(folder) / ADAPTER_DIR).is_dir(),
            **({"adapter_note": adapter_note} if adapter_note else {})}


def pooling_agreement(model: DecoderClassifier) -> tuple[str, list[str]]:
    """Where transformers' sequence classifier (causal, pooling the last token that is not the pad token) gives
    this classifier's logits: "always", "unpadded inputs" or "never"; and the card's notes saying why."""
    reads = "transformers' sequence classifier reads the last token that is not the pad token, under the causal mask"
    if not model.causal:
        return "never", [f"trained without the causal mask (--disable_causal_mask); {reads}: its logits differ"]
    if model.average:
        return "never", [f"trained on the mean over positions (--average_embeddings); {reads}: its logits differ"]
    if model.token_pos == "first":
        return "never", [f"trained on the first token (--trainable_token_pos first); {reads}: its logits differ"]
    if not model.reference_padding:
        return "always", []
    if model.token_pos == "flexible":
        return "always", ["GPT-2 kept the reference's padding (token 50256, no attention mask); `flexible` pools the "
                          "last token before the padding, as transformers does, and under the causal mask the padding "
                          "after it changes nothing: the logits agree on right-padded batches too"]
    return "unpadded inputs", ["GPT-2 kept the reference's rules: padding with token 50256 without an attention mask, "
                               "and `last` = the last position, padding included; transformers pools the last token "
                               "that is not the pad token. The two agree on inputs without padding (one text at a "
                               "time, or texts of one length), not on padded batches"]


def tokenizer_note(tokenizer) -> list[str]:
    """The run tokenised without special tokens; say so where this tokenizer adds some by default."""
    sample = "unfreeze"
    if tokenizer(sample)["input_ids"] == tokenizer(sample, add_special_tokens=False)["input_ids"]:
        return []
    return ["the run tokenised its texts without special tokens; this tokenizer adds some by default, so call it "
            "with add_special_tokens=False to give the model what it was trained on"]
