"""What trains in a `ControlTokenLM`: the one place that sets `requires_grad`.

Five independently switchable components, each found from the model's *structure* (never from
parameter-name substrings):

| component       | tensors                                                                 |
|-----------------|-------------------------------------------------------------------------|
| pause_embedding | `model.control_embeddings` (the delta rows of the control tokens)       |
| pause_head      | `model.pause_head` (weight, bias)                                       |
| lm_head         | the module returned by `get_output_embeddings()`                        |
| lm_embeddings   | the module returned by `get_input_embeddings()` (base vocabulary rows)  |
| lora            | the adapter sub-modules (`LoraLayer.adapter_layer_names`) of every peft LoRA layer |

Everything else is frozen.

**Tied input/output embeddings** (GPT-2): "LM head" and "LM embeddings" are then one tensor. If both
are switched on, that one tensor trains. If exactly one is switched on, the two are *untied* first: the
LM head gets its own copy of the matrix (and `config.tie_word_embeddings` becomes False, so a saved model
stays untied), then only the requested one trains and the other stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from unfreeze.errors import UsageError
from unfreeze.trainable import trainable_summary

COMPONENTS: dict[str, str] = {
    "pause_embedding": "embedding rows of the control tokens (the delta next to the frozen base matrix)",
    "pause_head": "the pause head: linear, hidden -> control tokens + 'use the LM head'",
    "lm_head": "the LM output layer",
    "lm_embeddings": "the LM input token embeddings",
    "lora": "LoRA adapters on the body (the model must have been given LoRA)",
}


@dataclass
class TrainableSummary:
    """Exactly which tensors train; printed by the recipe and recorded in metrics.json."""

    components: list[str]
    tensors: list[str]  # names of trainable parameter tensors (shared tensors counted once)
    shapes: list[tuple[int, ...]]
    trainable_params: int
    total_params: int
    untied: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        head = (f"trainable: {', '.join(self.components)} -> {len(self.tensors)} tensors, "
                f"{self.trainable_params:,} of {self.total_params:,} parameters ({share:.4f}%)")
        rows = [f"  {name} {list(shape)}" for name, shape in zip(self.tensors, self.shapes)]
        return [head, *self.notes, *rows]


def component_modules(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each component's parameters, located by module type/role."""
    from peft.tuners.lora import LoraLayer

    hf = model.hf_model
    parts: dict[str, list[nn.Parameter]] = {name: [] for name in COMPONENTS}
    if model.control_embeddings is not None:
        parts["pause_embedding"] = [model.control_embeddings]
        parts["pause_head"] = list(model.pause_head.parameters())
    parts["lm_head"] = list(hf.get_output_embeddings().parameters())
    parts["lm_embeddings"] = list(hf.get_input_embeddings().parameters())
    for module in hf.modules():
        if isinstance(module, LoraLayer):
            for attr in module.adapter_layer_names:  # peft's own list of its trainable sub-modules
                parts["lora"].extend(getattr(module, attr).parameters())
    return parts


def untie_embeddings(model: nn.Module) -> bool:
    """Give the LM head its own copy of a tied embedding matrix; True if something was untied."""
    hf = model.hf_model
    head, embeddings = hf.get_output_embeddings(), hf.get_input_embeddings()
    if head.weight is not embeddings.weight:
        return False
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for config in {id(hf.config): hf.config, id(hf.config.get_text_config()): hf.config.get_text_config()}.values():
        config.tie_word_embeddings = False  # keep it untied when saved and loaded again
    return True


def set_trainable(model: nn.Module, components: Iterable[str]) -> TrainableSummary:
    """Train exactly `components` (names from COMPONENTS); freeze every other parameter of `model`."""
    wanted = list(dict.fromkeys(components))
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise UsageError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    if not wanted:
        raise UsageError("nothing left to train: switch on at least one of unfreeze_pause_embedding, "
                         "unfreeze_pause_head, unfreeze_lm_head, unfreeze_lm_embeddings, lora")
    notes = []
    untied = False
    if ("lm_head" in wanted) != ("lm_embeddings" in wanted):
        untied = untie_embeddings(model)
        if untied:
            only = "lm_head" if "lm_head" in wanted else "lm_embeddings"
            notes.append(f"note: input and output embeddings were tied; untied them so that only {only} trains")
    parts = component_modules(model)
    chosen: dict[int, nn.Parameter] = {}
    for name in wanted:
        if not parts[name]:
            why = "the model has no control tokens (pause_token is null)" if name.startswith("pause") else (
                "the model has no LoRA adapter (set lora: true)")
            raise UsageError(f"cannot train {name}: {why}")
        chosen.update({id(p): p for p in parts[name]})
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    counts = trainable_summary(model)  # shared tensors counted once
    shapes = [tuple(model.get_parameter(name).shape) for name in counts["trainable_tensors"]]
    return TrainableSummary(components=wanted, tensors=counts["trainable_tensors"], shapes=shapes,
                            trainable_params=counts["trainable_params"], total_params=counts["total_params"],
                            untied=untied, notes=notes)
