"""GPT-2 with its LM head replaced by a 2-way classification head, run as explicit stages.

The network is the sequence of stages

    0: token + position embeddings  ->  1..L: transformer blocks  ->  L+1: final LayerNorm

followed by pooling (one position, the last non-padding token, or the mean) and the head. Running
stages explicitly (instead of `GPT2Model.forward`) is what lets `unfreeze` start the forward pass at
any stage from cached activations (see `unfreeze.cache.frozen_prefix`): `features(ids)` equals
`run_stages(embed(ids), 1, ...)`, bit for bit.

Pooling happens *before* the head. The reference applies the head at every position and then picks
one (or averages); the head is affine, so picking/averaging first is the same function, and it is
what allows caching only the pooled vector when only the head trains.
"""

from __future__ import annotations

import torch
from torch import nn

PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, the reference's padding token


class GPT2Classifier(nn.Module):
    def __init__(self, body: nn.Module, num_classes: int = 2, *, causal: bool = True,
                 token_pos: str = "last", average: bool = False, pad_token_id: int = PAD_TOKEN_ID):
        super().__init__()
        self.body = body  # a transformers GPT2Model
        self.head = nn.Linear(body.config.n_embd, num_classes)
        self.causal = causal
        self.token_pos = token_pos
        self.average = average
        self.pad_token_id = pad_token_id

    # --- stages -----------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.body.h)

    @property
    def final_stage(self) -> int:
        """Index of the last stage (the final LayerNorm)."""
        return self.num_blocks + 1

    def stage_modules(self) -> list[list[nn.Module]]:
        """The modules each stage uses, in order: what decides whether a stage's output can be cached."""
        return [[self.body.wte, self.body.wpe], *[[block] for block in self.body.h], [self.body.ln_f]]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.body.wte(input_ids) + self.body.wpe(positions)[None]

    def _attention_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        # None lets SDPA use its causal kernel. Like the reference, no padding mask is used: padding
        # sits at the end, so causal attention never lets a real token see it. Without the causal mask
        # every token attends to every token, padding included (the reference's behaviour); an explicit
        # all-True mask makes that hold for every attention backend.
        if self.causal:
            return None
        batch, length = hidden.shape[:2]
        return torch.ones(batch, 1, length, length, dtype=torch.bool, device=hidden.device)

    def run_stages(self, hidden: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Run stages `start .. stop-1` (1-based blocks, `final_stage` = LayerNorm) on `hidden`."""
        stop = self.final_stage + 1 if stop is None else stop
        mask = self._attention_mask(hidden)
        for index in range(max(start, 1), min(stop, self.final_stage)):
            hidden = self.body.h[index - 1](hidden, attention_mask=mask)
        if start <= self.final_stage < stop:
            hidden = self.body.ln_f(hidden)
        return hidden

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states, (batch, length, hidden)."""
        return self.run_stages(self.embed(input_ids), 1)

    # --- pooling and head -------------------------------------------------------------------------
    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length, hidden) -> (batch, hidden) at the configured position."""
        if self.token_pos == "flexible":
            # The last token before the padding (reference: count of non-pad tokens - 1).
            last = (input_ids != self.pad_token_id).sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.average:
            return hidden.mean(dim=1)
        return hidden[:, 0 if self.token_pos == "first" else -1]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Class logits, (batch, num_classes)."""
        return self.head(self.pool(self.features(input_ids), input_ids))

    def per_position_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The reference's view: the head at every position, (batch, length, num_classes)."""
        return self.head(self.features(input_ids))
