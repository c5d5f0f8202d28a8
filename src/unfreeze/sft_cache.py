"""Exact caching for `unfreeze sft` rows that train only what sits on top of the last hidden state.

When neither the body, nor the input embeddings, nor the pause embedding trains, and no dropout is
active, the final hidden state of an example is the same in every step and every validation pass.
The pause-table rows that train only the pause head (on a detached hidden state) and/or an LM head
that is not tied to trainable input embeddings then need the body once per example: we store the
final hidden states and run only the heads afterwards.

Whether that holds is read from the parameters the body actually uses (a tied LM head *is* the input
embedding, so training it makes the body trainable), never from the config's switch names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                      "dropout", "activation_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of the model to `p`: nn.Dropout modules and the float rates attention layers read."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
    config = getattr(model, "config", None)
    for name in DROPOUT_ATTRIBUTES:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, p)


def active_dropout(module: nn.Module) -> list[str]:
    """Names of the dropouts inside `module` that would change outputs in training mode."""
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Dropout) and sub.p > 0:
            found.append(name or "dropout")
        for attribute in DROPOUT_ATTRIBUTES:
            value = getattr(sub, attribute, None)
            if isinstance(value, float) and value > 0 and not isinstance(sub, nn.Dropout):
                found.append(f"{name}.{attribute}" if name else attribute)
    return found


@dataclass
class SFTCachePlan:
    enabled: bool
    reason: str
    estimated_bytes: int = 0


def plan(model, lengths: list[int], dtype: torch.dtype) -> SFTCachePlan:
    """Can the final hidden states be cached exactly for this model and trainable set?"""
    hf = model.hf_model
    if model.has_lora:
        return SFTCachePlan(False, "LoRA trains inside the body")
    head_only = {id(p) for p in hf.get_output_embeddings().parameters()} - {
        id(p) for p in hf.get_input_embeddings().parameters()}  # a tied LM head belongs to the body
    pause_head = {id(p) for p in model.pause_head.parameters()} if model.pause_head is not None else set()
    body_trainable = [name for name, p in model.named_parameters()
                      if p.requires_grad and id(p) not in head_only | pause_head]
    if body_trainable:
        return SFTCachePlan(False, f"{body_trainable[0]} trains and feeds the hidden state")
    dropout = [d for d in active_dropout(hf) if "lm_head" not in d]
    if dropout:
        return SFTCachePlan(False, f"dropout is active in the body ({dropout[0]}); set dropout: 0.0 to allow caching")
    element = torch.empty(0, dtype=dtype).element_size()
    return SFTCachePlan(True, "only heads on the final hidden state train",
                        sum(lengths) * hf.config.get_text_config().hidden_size * element)


@torch.no_grad()
def attach_hidden_states(model, examples: list, collate, batch_size: int, device: torch.device,
                         autocast, dtype: torch.dtype, desc: str) -> int:
    """Compute each example's final hidden states once (in batches) and store them on the example."""
    was_training = model.training
    model.eval()
    stored = 0
    for begin in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        chunk = examples[begin:begin + batch_size]
        batch = collate(chunk)
        with autocast():
            hidden = model.final_hidden(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for example, rows in zip(chunk, hidden):
            example.hidden = rows[: len(example.input_ids)].to(dtype).clone()
            stored += example.hidden.numel() * example.hidden.element_size()
    model.train(was_training)
    return stored


def verify_heads_reproduce_logits(model, batch: dict, device: torch.device) -> bool:
    """The cached path recomputes logits as lm_head(hidden); check that equals the model's own logits."""
    with torch.no_grad():
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out = model.base(inputs_embeds=model.embed(ids), attention_mask=mask, output_hidden_states=True,
                         return_dict=True)
        again = model.hf_model.get_output_embeddings()(out.hidden_states[-1])
    return torch.allclose(again.float(), out.logits.float(), atol=1e-5, rtol=1e-5)
