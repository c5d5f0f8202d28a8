"""The frozen prefix a cache runs, for classify and for sft alike: token rows -> hidden states at block boundaries.

Boundary `b` is the input of stage `b` (stages: 0 what runs before the blocks, 1..L the blocks, L+1 the final
norm): boundary 1 is what the forward hands block 0, boundary L+1 the last block's output, boundary L+2 the
final norm's output (what the heads read). A `Prefix` computes them inside the model's own forward
(`models/staged.py`), so each block gets exactly the mask and position embeddings the model gives it.

What is stored per example does not depend on how the run reads it afterwards (classify's pooling): every
position any reader may read (`free_length`): under an attention mask the real tokens, under GPT-2's
reference padding (no mask) every position, in sft the whole labelled sequence. A classify run then cuts to
the positions its pooling reads, so runs that differ only in pooling share one store (`cache/disk.py`).

`ClassifierPrefix` runs unfreeze's `DecoderClassifier`; `CausalLMPrefix` runs the causal LM of a pause model
(its input embeddings with the control tokens' delta rows, `ControlTokenLM.embed`) under the attention mask
of right padding, as `ControlTokenLM.forward` runs it.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from unfreeze.cache.memory import _real_length, batches_by_length
from unfreeze.models import lora as lora_lib


def frozen_tensors(modules: list[nn.Module]) -> list[torch.Tensor]:
    """The parameters and buffers of `modules` as the key hashes them, each once: LoRA's adapters left out (they
    train, so no stored value depends on them, and their random draws would give every seed another key)."""
    adapters = {id(p) for m in modules for a in lora_lib.lora_modules(m) for p in a.parameters()}
    found = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()] if id(t) not in adapters}
    return list(found.values())


class ClassifierPrefix:
    """classify's frozen network (`DecoderClassifier`): stages as `run_stages` runs them."""

    def __init__(self, model):
        self.model = model
        self.num_blocks = model.num_blocks
        self.hidden_size = int(model.hidden_size)
        self.dtype = model.head.weight.dtype

    def identity(self) -> dict:
        """What else the values depend on: architecture, config (heads, rotary base, attention kernel) and the mask
        semantics (causal, padding). Not the pooling: that only decides which positions a run reads."""
        m = self.model
        return {"architecture": type(m).__name__, "config": json.loads(m.body.config.to_json_string(use_diff=False)),
                "mask": {"causal": m.causal, "pad_token_id": m.pad_token_id, "reference_padding": m.reference_padding}}

    def weight_tensors(self) -> list[torch.Tensor]:
        return frozen_tensors([module for stage in self.model.stage_modules() for module in stage])

    def free_length(self, row: torch.Tensor) -> int:
        """Positions stored for a row: every one under the reference padding, the real tokens under a mask."""
        return len(row) if self.model.reference_padding else _real_length(self.model, row)

    def batches(self, rows: list[torch.Tensor], batch_size: int) -> list[list[int]]:
        one_by_one = self.model.reference_padding and len({len(r) for r in rows}) > 1
        return batches_by_length([self.free_length(r) for r in rows], batch_size, one_by_one)

    def batch(self, rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The rows as one batch of ids, cut to their longest stored length (padded with the pad token)."""
        length = max(self.free_length(r) for r in rows)
        pad = torch.full((length,), self.model.pad_token_id, dtype=rows[0].dtype)
        return torch.stack([torch.cat([r[:length], pad[:max(length - len(r), 0)]]) for r in rows]).to(device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(ids)

    def advance(self, hidden: torch.Tensor, ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Boundary `start` -> boundary `stop` (stages start .. stop-1)."""
        return self.model.run_stages(hidden, start, stop, input_ids=ids)


class CausalLMPrefix:
    """sft's frozen network: the pause model's causal LM, embeddings with the control rows, right padding."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.staged = model.staged_forward()  # traced once: what runs before, between and after the blocks
        self.num_blocks = len(self.staged.structure.blocks)
        embedding = model.hf_model.get_input_embeddings()
        self.hidden_size, self.dtype = int(embedding.weight.shape[1]), embedding.weight.dtype

    def identity(self) -> dict:
        hf = self.model.hf_model
        config = json.loads(hf.config.to_json_string(use_diff=False))
        config.pop("tie_word_embeddings", None)  # the LM head's business (untied to train it alone), not the body's
        return {"architecture": type(hf).__name__, "config": config, "control_tokens": list(self.model.control_tokens),
                "mask": "right padding, causal"}

    def weight_tensors(self) -> list[torch.Tensor]:
        rows = [self.model.control_embeddings] if self.model.control_embeddings is not None else []
        return frozen_tensors([self.staged.body]) + rows

    def free_length(self, row: torch.Tensor) -> int:
        return len(row)

    def batches(self, rows: list[torch.Tensor], batch_size: int) -> list[list[int]]:
        return batches_by_length([len(r) for r in rows], batch_size)

    def batch(self, rows: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, key mask): right-padded with the pad id, True at real tokens."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = row, True
        return ids.to(device), mask.to(device)

    def embed(self, batch) -> torch.Tensor:
        ids, mask = batch
        return self.staged.embed(None, mask, inputs_embeds=self.model.embed(ids))

    def advance(self, hidden: torch.Tensor, batch, start: int, stop: int) -> torch.Tensor:
        """Boundary `start` -> boundary `stop` (see the module docstring; L+2: after the final norm)."""
        _, mask = batch
        final = stop == self.num_blocks + 2
        return self.staged.run(hidden, start - 1, min(stop - 1, self.num_blocks), mask, True, final)
