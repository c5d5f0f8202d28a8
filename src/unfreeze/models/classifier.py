"""A decoder model (GPT-2, Llama, Qwen2, GPT-NeoX, ...) with a new classification head, run as stages.

The network is the sequence of stages

    0: embeddings  ->  1..L: transformer blocks  ->  L+1: final norm

followed by pooling (one position, the last real token, or the mean) and the head. The stages are the
base model's own forward cut at block boundaries (`unfreeze.models.staged`, structure read by
`unfreeze.models.structure`), which is what lets `unfreeze` start the forward pass at any stage from
cached activations (see `unfreeze.cache.memory`): `features(ids)` equals
`run_stages(embed(ids), 1, ..., input_ids=ids)`, bit for bit.

Padding and pooling (`reference_padding`):
* GPT-2 keeps the reference's semantics: padded with 50256, no attention mask (padding sits at the end,
  so with the causal mask no real token sees it), `last` = the last position (padding included),
  `flexible` = the last non-padding token, mean = over every position.
* Every other model is padded on the right with its pad token (eos where it has none) and gets an
  attention mask on the keys: `last` and `flexible` = the last real token, mean = over the real tokens.
  The real tokens are the positions up to the last one that is not the pad token, so an example gives
  the same logits alone and inside a padded batch.

Only the positions pooling depends on run (`needed_length`): under the causal mask nothing after the
furthest pooled position reaches it, so `first` runs one position and `flexible` up to the longest text
(uncached, in the cache build and from the cache); `last` under the reference's padding runs them all.

Pooling happens *before* the head. The reference applies the head at every position and then picks
one (or averages); the head is affine, so picking/averaging first is the same function, and it is
what allows caching only the pooled vector when only the head trains.
"""

from __future__ import annotations

import torch
from torch import nn

from unfreeze.models.reduced_block import reducer_for
from unfreeze.models.staged import StagedForward

PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, the reference's padding token


def real_lengths(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Per row, 1 + the index of the last token that is not padding (at least 1): right padding only."""
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    return ((input_ids != pad_token_id) * positions).amax(dim=1).clamp(min=1)


class DecoderClassifier(nn.Module):
    def __init__(self, body: nn.Module, num_classes: int = 2, *, causal: bool = True,
                 token_pos: str = "last", average: bool = False, pad_token_id: int = PAD_TOKEN_ID,
                 reference_padding: bool | None = None, head_bias: bool = True):
        super().__init__()
        self.body = body  # the Hugging Face base model (GPT2Model, LlamaModel, ...)
        self._staged = StagedForward(body)
        self.structure = self._staged.structure
        # The reference's head has a bias; transformers' own classification heads (`score`) have none, and
        # classify gives every model but GPT-2 that head, so that a saved classifier is the architecture's own
        # (a bias cannot be carried by a model whose final norm has none: `export.classifier_folder`).
        self.head = nn.Linear(self.hidden_size, num_classes, bias=head_bias)
        self.causal = causal
        self.token_pos = token_pos
        self.average = average
        self.pad_token_id = pad_token_id
        if reference_padding is None:
            reference_padding = getattr(body.config, "model_type", None) == "gpt2"
        self.reference_padding = reference_padding
        # Run the last block at the pooled position only where that is exact (see `pooled_features`);
        # False forces the full path (tests and benchmarks compare the two).
        self.reduce_last_block = True

    # --- structure --------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return self.structure.blocks

    @property
    def final_norm(self) -> nn.Module:
        """The norm after the blocks (an Identity where the model has none)."""
        return self.structure.final_norm

    @property
    def hidden_size(self) -> int:
        """The width of the base model's output: what the head reads."""
        return self.structure.output_width

    # --- stages -----------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.structure.blocks)

    @property
    def final_stage(self) -> int:
        """Index of the last stage (the final norm)."""
        return self.num_blocks + 1

    def stage_modules(self) -> list[list[nn.Module]]:
        """The modules each stage uses, in order: what decides whether a stage's output can be cached."""
        s = self.structure
        # What runs before the blocks (embeddings, rotary modules, embedding norms) is recomputed for every stage:
        # it is stage 0. Modules the forward calls between blocks belong to every block stage.
        return [list(s.before), *[[block, *s.within] for block in s.blocks], list(s.after)]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._staged.embed(input_ids, self.key_mask(input_ids, input_ids))

    def key_mask(self, input_ids: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """(batch, length) True at real tokens; None under the reference's GPT-2 semantics (no mask)."""
        if self.reference_padding:
            return None
        if input_ids is None:
            raise ValueError("run_stages needs input_ids for models with an attention mask")
        lengths = real_lengths(input_ids, self.pad_token_id)
        return torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]

    def run_stages(self, hidden: torch.Tensor, start: int, stop: int | None = None,
                   input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run stages `start .. stop-1` (1-based blocks, `final_stage` = final norm) on `hidden`.

        `input_ids` give the attention mask (not needed for GPT-2 under the reference's semantics).
        """
        stop = self.final_stage + 1 if stop is None else stop
        first, last = max(start, 1) - 1, min(stop, self.final_stage) - 1
        return self._staged.run(hidden, first, last, self.key_mask(input_ids, hidden), self.causal,
                                start <= self.final_stage < stop, input_ids=input_ids)

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states, (batch, length, hidden)."""
        return self.run_stages(self.embed(input_ids), 1, input_ids=input_ids)

    # --- pooling and head -------------------------------------------------------------------------
    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length, hidden) -> (batch, hidden) at the configured position."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.reference_padding:
            if self.token_pos == "flexible":
                # The last token before the padding (reference: count of non-pad tokens - 1).
                last = (input_ids != self.pad_token_id).sum(dim=1) - 1
                return hidden[rows, last]
            if self.average:
                return hidden.mean(dim=1)
            return hidden[:, 0 if self.token_pos == "first" else -1]
        lengths = real_lengths(input_ids, self.pad_token_id)
        if self.token_pos == "flexible" or (self.token_pos == "last" and not self.average):
            return hidden[rows, lengths - 1]
        if self.average:
            real = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).to(hidden.dtype)
            return (hidden * real[..., None]).sum(dim=1) / lengths[:, None].to(hidden.dtype)
        return hidden[:, 0]

    def pooled_position(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """(batch,) the one position `pool` reads per row, in [0, length); None for mean pooling."""
        length = input_ids.shape[1]
        if self.reference_padding:
            if self.token_pos == "flexible":
                return ((input_ids != self.pad_token_id).sum(dim=1) - 1) % length  # -1: python-style last
            if self.average:
                return None
            return torch.full((input_ids.shape[0],), 0 if self.token_pos == "first" else length - 1,
                              device=input_ids.device)
        if self.token_pos == "flexible" or (self.token_pos == "last" and not self.average):
            return real_lengths(input_ids, self.pad_token_id) - 1
        return None if self.average else torch.zeros_like(input_ids[:, 0])

    def needed_length(self, input_ids: torch.Tensor) -> int:
        """How many leading positions of `input_ids` the pooled output depends on.

        Under a causal mask no position after the furthest pooled one can reach it: `first` needs one,
        `flexible` the longest text, `last` under the reference's padding every position. Mean pooling and
        bidirectional attention read every position (under a mask: every real one).
        """
        positions = self.pooled_position(input_ids) if self.causal else None
        if positions is not None and positions.numel():
            return int(positions.max()) + 1
        if self.reference_padding:
            return input_ids.shape[1]
        return int(real_lengths(input_ids, self.pad_token_id).max())

    def pooled_features(self, hidden: torch.Tensor, start: int, input_ids: torch.Tensor) -> torch.Tensor:
        """`pool(run_stages(hidden, start, input_ids=input_ids), input_ids)`, (batch, hidden).

        When the pooled position is one token per example, the last block runs its queries, output
        projection, MLP and the final norm at that position only (`unfreeze.models.reduced_block`): same
        function, a fraction of the last block's work. Mean pooling, bidirectional attention, unsupported
        blocks, active dropout or `reduce_last_block = False` take the full path.
        """
        last = self.num_blocks  # stage index of the last block
        positions = self.pooled_position(input_ids) if self.causal and self.reduce_last_block else None
        reducer = None
        four_d_masks = self._staged.config._attn_implementation in ("sdpa", "eager")  # the reducer reads their rows
        if positions is not None and 1 <= start <= last and four_d_masks:
            reducer = reducer_for(self.blocks[-1], self._staged.mask_kinds[-1])
        if reducer is None:
            return self.pool(self.run_stages(hidden, start, input_ids=input_ids), input_ids)
        rows = torch.arange(hidden.shape[0], device=hidden.device)

        def last_block(block_input: torch.Tensor, arguments: dict) -> torch.Tensor:
            # Its arguments are the ones the model's forward passes it (mask, rotary angles); its output is read at
            # the pooled positions only, through what the forward does after the blocks (per position: the norm).
            output = torch.zeros_like(block_input)
            output[rows, positions] = reducer(block_input, positions, arguments).to(output.dtype)
            return output

        out = self._staged.run_last_block_as(hidden, start - 1, last_block, self.key_mask(input_ids, hidden),
                                             self.causal, input_ids=input_ids)
        return out[rows, positions]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Class logits, (batch, num_classes)."""
        return self.head(self.pooled_features(self.embed(input_ids), 1, input_ids))

    def per_position_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The reference's view: the head at every position, (batch, length, num_classes)."""
        return self.head(self.features(input_ids))


GPT2Classifier = DecoderClassifier  # the name the GPT-2-only version had
