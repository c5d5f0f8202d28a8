"""The parts of any decoder model that a choice of what trains names, read from its modules (never its names).

`model_parts(model)` is the one place that reads them, for unfreeze's `DecoderClassifier`, a pause model
(`ControlTokenLM`), a peft `PeftModel` or a transformers model: the decoder stack (`body`) and its structure
(blocks, final norm; traced, see `models/staged.py`), the output layer (classify's new head, a causal LM's
LM head, a sequence classifier's `score`), the input embeddings, and a pause model's own tensors.
`models/trainable.py` turns words into their parameters; `export/plan.py` names them for other stacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models.structure import Structure


@dataclass
class ModelParts:
    """What a choice names, read from a model's modules (never from parameter names).

    `root` holds every parameter (`all`; `set_trainable` freezes the rest of it). `body` is the decoder stack
    (the Hugging Face base model); its `structure` (blocks, final norm) is read when first asked, because
    the pause components need only the embeddings and the output layer, and sft runs models whose stages
    classify cannot read. `output` is the output layer: unfreeze's classifier head, a causal LM's LM head,
    a sequence classifier's head (None for a bare base model). `pause` is the pause model (its control rows
    and pause head), `new_head` whether the output layer is new (classify's head: it trains under any choice).
    """

    root: nn.Module
    body: nn.Module
    output: nn.Module | None
    token_embedding: nn.Module | None
    known_structure: Structure | None = None
    pause: nn.Module | None = None
    new_head: bool = False

    @cached_property
    def structure(self) -> Structure:
        if self.known_structure is not None:
            return self.known_structure
        if self.pause is not None:  # a pause model keeps its LM's traced stages
            return self.pause.staged_forward().structure
        from unfreeze.models.staged import traced_structure

        return traced_structure(self.body)

    def output_parameters(self, choice: str) -> list[nn.Parameter]:
        """The output layer's own parameters (see `trained_view`); a model without one is refused."""
        if self.output is None:
            raise UsageError(f"{choice}: {type(self.root).__name__} has no output layer (a base model without a "
                             "head); load it with AutoModelForCausalLM or AutoModelForSequenceClassification")
        return list(trained_view(self.output).parameters())


def trained_view(module: nn.Module) -> nn.Module:
    """The module whose parameters train when `module` trains in full: a LoRA layer's base layer (the adapters
    are LoRA's), the active copy of a peft `modules_to_save` wrapper (the copy is what peft trains)."""
    copies = getattr(module, "modules_to_save", None)
    active = getattr(module, "active_adapters", None)
    if isinstance(copies, nn.ModuleDict) and active and active[0] in copies:
        return copies[active[0]]
    return getattr(module, "base_layer", module)


def model_parts(model: nn.Module) -> ModelParts:
    """The parts of unfreeze's classifier, a pause model (`hf_model`), a peft `PeftModel` or a transformers model."""
    from unfreeze.models.classifier import DecoderClassifier

    if isinstance(model, DecoderClassifier):
        return ModelParts(model, model.body, model.head, model.structure.token_embedding, model.structure,
                          new_head=True)
    inner = getattr(model, "hf_model", None)  # a pause model: the Hugging Face model it wraps
    if isinstance(inner, nn.Module):
        return dataclasses.replace(model_parts(inner), root=model, pause=model)
    if _is_peft_model(model):
        return dataclasses.replace(model_parts(model.get_base_model()), root=model)
    return _transformers_parts(model)


def _is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _transformers_parts(model: nn.Module) -> ModelParts:
    """A transformers model: the decoder stack is `base_model` (the module under `base_model_prefix`); the output
    layer is `get_output_embeddings()` (a causal LM's LM head), else the one other child with parameters (a
    sequence classifier's `score`)."""
    body = getattr(model, "base_model", model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None and body is not model:
        heads = [(name, child) for name, child in model.named_children()
                 if child is not body and any(True for _ in child.parameters())]
        if len(heads) > 1:
            raise UsageError(f"{type(model).__name__}: cannot tell its output layer among "
                             f"{', '.join(name for name, _ in heads)}")
        output = heads[0][1] if heads else None
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embedding = None
    return ModelParts(model, body, output, embedding)
