"""`unfreeze sft`'s exact frozen-prefix cache: the hidden states where everything that trains begins, computed once.

With no active dropout in it, a prefix of the network none of whose parameters train (the embeddings with the
pause row, the first blocks) is a fixed function of an example's tokens: its output at the block boundary
where training begins is the same in every step and every validation pass. So it is computed once per
example (the whole labelled sequence, every position) and each step runs only what follows: the remaining
blocks, the final norm and the heads (`ControlTokenLM.resume_from`). Where nothing in the body trains (only
the pause head, or an LM head untied from the input embeddings), the boundary is after the final norm: only
the heads run, as the earlier final-hidden-state cache did.

Which stages are frozen is read from the parameters each stage uses (`memory.frozen_prefix_stages`; a tied
LM head *is* the input embedding, so training it makes stage 0 trainable), never from the switches' names.
The states are stored in memory under the memory budget (`cache/policy.py`; no bf16 fallback: exact or
absent), or, with `feature_cache_dir`, in the shared disk store (`cache/disk.py`: the same key and atomic
build as classify's, so a second run with the same frozen network and data reads them without running a
frozen block). Before use, the cached path is checked against the model's own forward on two examples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from unfreeze.cache import build, disk, policy
from unfreeze.cache.memory import frozen_prefix_stages
from unfreeze.errors import UsageError
from unfreeze.models.dropout import active_dropout


@dataclass
class SFTCachePlan:
    enabled: bool
    reason: str
    estimated_bytes: int = 0
    boundary: int = 0  # the stored boundary (cache/prefix.py); num_blocks + 2: after the final norm

    @property
    def kind(self) -> str:
        return "final_hidden" if self.reason.startswith("only heads") else "hidden"


def stage_modules(model) -> list[list]:
    """The modules each stage of the pause model's LM uses, in order (the control rows belong to stage 0)."""
    s = model.staged_forward().structure  # traced once: what runs before, between and after the blocks
    rows = [_Rows(model.control_embeddings)] if model.control_embeddings is not None else []
    return [[*s.before, *rows], *[[block, *s.within] for block in s.blocks], list(s.after)]


class _Rows(torch.nn.Module):
    """The control rows as a module of stage 0 (a parameter of the pause model, not of its LM)."""

    def __init__(self, rows: torch.nn.Parameter):
        super().__init__()
        object.__setattr__(self, "rows", rows)

    def parameters(self, recurse: bool = True):
        return iter([self.rows])


def plan(model, lengths: list[int], dtype: torch.dtype) -> SFTCachePlan:
    """Where the frozen prefix ends, and the bytes its states take for `lengths`; disabled with the reason."""
    try:
        stages = stage_modules(model)
    except UsageError as err:  # an LM whose blocks cannot be read: no boundary to stop at
        return SFTCachePlan(False, f"its stages cannot be read ({err})")
    frozen = frozen_prefix_stages(stages)
    blocks = len(stages) - 2
    if frozen <= 1:  # the first stage that is not frozen: it trains, or its dropout is active
        dropout = [d for m in stages[frozen] for d in active_dropout(m)]
        trains = any(p.requires_grad for m in stages[frozen] for p in m.parameters())
        if not trains and dropout:
            return SFTCachePlan(False, f"dropout is active in the body ({dropout[0]}); set dropout: 0.0 to allow "
                                       "caching")
        return SFTCachePlan(False, "the input embeddings (the pause row, or an LM head tied to them) train"
                            if frozen == 0 else "block 0 trains; only the embedding lookup before it is frozen")
    element = torch.empty(0, dtype=dtype).element_size()
    width = model.hf_model.get_input_embeddings().weight.shape[1]
    reason = ("only heads on the final hidden state train" if frozen == blocks + 2 else
              f"the stages before {'the final norm' if frozen == blocks + 1 else f'block {frozen - 1}'} are frozen")
    return SFTCachePlan(True, reason, sum(lengths) * width * element, frozen)


@torch.no_grad()
def _matches_own_forward(model, prefix, boundary: int, rows: list[torch.Tensor], device: torch.device) -> bool:
    """The cached path (states at `boundary`, the rest of the forward, the LM head) gives the model's own logits."""
    batch = prefix.batch(rows, device)
    ids, mask = batch
    states = prefix.embed(batch)
    if boundary > 1:
        states = prefix.advance(states, batch, 1, boundary)
    last = prefix.num_blocks + 2
    final = prefix.advance(states, batch, boundary, last) if boundary < last else states
    out = model.base(inputs_embeds=model.embed(ids), attention_mask=mask.long(), return_dict=True)
    again = model.hf_model.get_output_embeddings()(final.to(out.logits.dtype))
    scale = max(1.0, out.logits[mask].abs().max().item())
    return (again[mask].float() - out.logits[mask].float()).abs().max().item() <= 1e-5 * scale


def _in_memory(prefix, tokens: dict, boundary: int, device: torch.device, autocast_dtype, dtype: torch.dtype,
               batch_size: int) -> dict[str, build.Targets]:
    """The states at `boundary` of every row, in flat arrays in memory (the store's layout)."""
    stored = np.uint16 if dtype == torch.bfloat16 else np.float32
    targets = {split: build.Targets([len(r) for r in rows]) for split, rows in tokens.items()}
    for target in targets.values():
        target.hidden[boundary] = np.zeros((sum(target.lengths), prefix.hidden_size), dtype=stored)
    build.write_rows(prefix, tokens, targets, build.Pass(1, boundary), device, autocast_dtype, dtype, batch_size)
    return targets


def prepare(model, splits: dict[str, list], pad_id: int, request: policy.CacheRequest, *, device: torch.device,
            autocast_dtype: torch.dtype | None, dtype: torch.dtype, precision: str, batch_size: int,
            log: logging.Logger, cache_dir: str | None = None,
            disk_budget_gb: float | None = None) -> tuple[dict, float]:
    """Store every example's states at the frozen boundary (in `dtype`) when that is exact and fits; each example
    then carries them (`example.hidden`) and the model resumes from there. Returns metrics.json's `cache` entry and
    the seconds spent building it."""
    from unfreeze.cache.prefix import CausalLMPrefix

    examples = [e for rows in splits.values() for e in rows]
    cache_plan = plan(model, [len(e.input_ids) for e in examples], dtype)
    if not cache_plan.enabled:
        return policy.not_exact(request, cache_plan.reason, log), 0.0
    model.to(device)
    prefix = CausalLMPrefix(model, pad_id)
    tokens = {split: [torch.tensor(e.input_ids) for e in rows] for split, rows in splits.items()}
    reused = cache_dir is not None and disk.open_cache(cache_dir, disk.cache_key(prefix, tokens, precision, device),
                                                       [cache_plan.boundary]) is not None
    # A store is written only after this check passed for the same architecture, config and weights (its key).
    if not reused and not _matches_own_forward(model, prefix, cache_plan.boundary, tokens[next(iter(tokens))][:2],
                                               device):
        return policy.not_exact(request, "the cached path does not give this model's own logits", log), 0.0
    begin, shared = time.perf_counter(), None
    if cache_dir is not None:
        budget = disk_budget_gb * 2**30 if disk_budget_gb is not None else None
        store, built = disk.get_or_build(prefix, tokens, cache_dir, [cache_plan.boundary], precision, device, budget,
                                         batch_size, pooled=None, autocast_dtype=autocast_dtype, dtype=dtype)
        if cache_plan.boundary in store.boundaries:
            rows = {split: store.rows(split, cache_plan.boundary) for split in tokens}
            shared = {"folder": str(store.folder), "built": built}
    if shared is None:
        # No bf16 fallback: sft's cache is exact or absent (docs/sft.md), so over the budget the run goes uncached.
        decision = policy.within_budget(request, cache_plan.estimated_bytes, dtype, torch.device("cpu"), log,
                                        bf16_fallback=False)
        if not decision.fits:
            return policy.no_cache("over budget"), 0.0
        targets = _in_memory(prefix, tokens, cache_plan.boundary, device, autocast_dtype, dtype, batch_size)
        rows = {split: [build.from_stored(t.hidden[cache_plan.boundary][o:o + n], dtype)
                        for o, n in zip(t.offsets, t.lengths)] for split, t in targets.items()}
    for split, examples_of in splits.items():
        for example, states in zip(examples_of, rows[split]):
            example.hidden = states
    model.resume_from(cache_plan.boundary if cache_plan.boundary < prefix.num_blocks + 2 else None, prefix)
    seconds = time.perf_counter() - begin if shared is None or shared["built"] else 0.0
    stored = sum(e.hidden.numel() * e.hidden.element_size() for e in examples)
    log.info(f"activation cache: {cache_plan.reason}; {stored / 2**20:.1f} MiB in {seconds:.1f}s"
             + (f" ({'built' if shared['built'] else 'reused'}: {shared['folder']})" if shared else ""))
    info = {"kind": cache_plan.kind, "boundary": cache_plan.boundary, "bytes": stored,
            "estimated_bytes": cache_plan.estimated_bytes, "dtype": str(dtype).replace("torch.", ""),
            "build_s": round(seconds, 3), "reason": cache_plan.reason}
    return ({**info, "shared": shared} if shared else info), seconds
