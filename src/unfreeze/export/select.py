"""`unfreeze.select(model, "last_blocks:4")`: a choice of what trains, on your own model object.

Any Hugging Face decoder model (`AutoModelForCausalLM`, `*ForSequenceClassification`, a bare base model for
`all`, a peft `PeftModel`): the choice is read from its structure exactly as `unfreeze classify` reads it
(`models.trainable`: the blocks, the final norm, the output layer -- a causal LM's LM head, a sequence
classifier's `score`). Selecting changes nothing but, for the LoRA choices, adds the adapters (peft's
layout by default, so the model stays a plain peft-injected model; a PeftModel trains the LoRA it has);
`apply()` sets `requires_grad`: exactly the selected parameters train, every other one is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from unfreeze.models import trainable


@dataclass
class Selected:
    """A choice resolved on one model: what trains (names, counts, the summary) and how to apply or export it."""

    model: nn.Module
    choice: str
    selection: trainable.Selection
    summary: trainable.TrainableSummary

    @property
    def names(self) -> list[str]:
        """The trainable parameters' names, as `model.named_parameters()` gives them (a tied tensor once)."""
        return list(self.summary.tensors)

    @property
    def trainable_params(self) -> int:
        return self.summary.trainable_params

    @property
    def total_params(self) -> int:
        return self.summary.total_params

    @property
    def parameters(self) -> list[nn.Parameter]:
        return list(self.selection.params)

    def lines(self) -> list[str]:
        """The summary `unfreeze classify` and `unfreeze sft` log: counts, notes, one line per tensor."""
        return self.summary.lines()

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def apply(self) -> "Selected":
        """Train exactly the selected parameters (`requires_grad`), freeze every other one; returns self."""
        trainable.set_trainable(self.model, self.selection.params)
        return self

    def plan(self):
        """The choice as a training stack needs it (`unfreeze.export.plan.TrainPlan`)."""
        from unfreeze.export.plan import plan_of

        return plan_of(self.model, self.selection, self.choice)

    def export(self, to: str) -> str:
        """The choice in another stack's own form: to = peft (adapter_config.json), axolotl, llamafactory (YAML)
        or names (one per line); a UsageError says why a choice cannot be written in that form."""
        from unfreeze.export.formats import render

        return render(self.plan(), to)


def select(model: nn.Module, choice: str | Sequence[str], *, lora_rank: int = 8, lora_alpha: float = 8,
           lora_layout: str = "peft", seed: int | None = None, with_output: bool = False) -> Selected:
    """Resolve `choice` on `model`: words of the one vocabulary (`--trainable_layers`: last_layer, last_block,
    last_blocks:N, blocks:SET, all, lora, lora_alternative, bias, norms, attention:BLOCKS, mlp:BLOCKS,
    lora:BLOCKS, embeddings, new_tokens, pause_head, joined with +; see `unfreeze.models.trainable`), or, for a
    pause model, a list of its components (pause_embedding, pause_head, lm_head, lm_embeddings, lora).
    `with_output`: the output layer trains whatever the words say (a head new to the task, as classify's is).

    The LoRA presets add adapters of `lora_rank`, scaled by `lora_alpha` as the reference scales them (alpha,
    not alpha/r), in `lora_layout` "peft" (peft's layers) or "reference" (unfreeze's, three updates on GPT-2's
    fused c_attn); `seed` draws their A matrices (None: torch's global generator).
    """
    if isinstance(choice, str):
        selection = trainable.preset_selection(model, choice, lora_rank, lora_alpha, seed, lora_layout, with_output)
        name = choice
    else:
        selection = trainable.component_selection(model, choice)
        name = ",".join(selection.choice)
    return Selected(model, name, selection, trainable.trainable_summary(model, selection, planned=True))
