"""`unfreeze sft`'s exact cache, for rows that train only what sits on top of the last hidden state.

When neither the body, nor the input embeddings, nor the pause embedding trains, and no dropout is
active, the final hidden state of an example is the same in every step and every validation pass.
The pause-table rows that train only the pause head (on a detached hidden state) and/or an LM head
that is not tied to trainable input embeddings then need the body once per example: we store the
final hidden states and run only the heads afterwards.

Whether that holds is read from the parameters the body actually uses (a tied LM head *is* the input
embedding, so training it makes the body trainable), never from the config's switch names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from unfreeze.cache import policy
from unfreeze.models.dropout import active_dropout


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
    dropout = active_dropout(hf, exclude=(hf.get_output_embeddings(),))  # the LM head acts after the cache
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


def prepare(model, examples: list, collate: Callable, request: policy.CacheRequest, *, device: torch.device,
            autocast: Callable, dtype: torch.dtype, batch_size: int, log: logging.Logger) -> tuple[dict, float]:
    """Store each example's final hidden states (in `dtype`) when that is exact and fits the budget.

    Returns the `cache` entry of metrics.json and the seconds spent building the cache.
    """
    cache_plan = plan(model, [len(e.input_ids) for e in examples], dtype)
    if cache_plan.enabled:
        model.to(device)
        if not verify_heads_reproduce_logits(model, collate(examples[:2]), device):
            cache_plan = SFTCachePlan(False, "this model's logits are not lm_head(last hidden state)")
    if not cache_plan.enabled:
        return policy.not_exact(request, cache_plan.reason, log), 0.0
    # No bf16 fallback: sft's cache is exact or absent (docs/sft.md), so over the budget the run goes uncached.
    decision = policy.within_budget(request, cache_plan.estimated_bytes, dtype, device, log, bf16_fallback=False)
    if not decision.fits:
        return policy.no_cache("over budget"), 0.0
    begin = time.perf_counter()
    stored = attach_hidden_states(model, examples, collate, batch_size, device, autocast, dtype,
                                  "caching final hidden states")
    seconds = time.perf_counter() - begin
    log.info(f"activation cache: {cache_plan.reason}; {stored / 2**20:.1f} MiB in {seconds:.1f}s")
    info = {"kind": "final_hidden", "bytes": stored, "estimated_bytes": cache_plan.estimated_bytes,
            "dtype": str(dtype).replace("torch.", ""), "build_s": round(seconds, 3), "reason": cache_plan.reason}
    return info, seconds
