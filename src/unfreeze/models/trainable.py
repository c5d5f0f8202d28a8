"""What trains: the one place that turns a choice into a set of parameters and sets `requires_grad`.

A choice is either a classification preset (`unfreeze classify --trainable_layers`) or a list of
pause-model components (the `unfreeze_*` / `lora` switches of `unfreeze sft`). Both are resolved from
module structure, never from parameter-name substrings, into a `Selection` of parameters;
`set_trainable` trains exactly those and freezes everything else; `trainable_summary` counts what trains
(a shared tensor once), for the log and metrics.json of either recipe.

Classification presets, on any decoder model whose parts `model_parts` can read (unfreeze's
`DecoderClassifier`, a Hugging Face `*ForCausalLM` / `*ForSequenceClassification` / base model, a peft
`PeftModel`): the blocks and final norm come from the decoder stack's structure, the *output layer* is
the classifier's new head, a causal LM's LM head (`get_output_embeddings()`) or a sequence classifier's
`score` head:

| preset            | modules                                                                   |
|-------------------|---------------------------------------------------------------------------|
| last_layer        | the output layer (the head)                                               |
| last_block        | the last transformer block, the final norm, the head                      |
| last_two_blocks   | the last two blocks, the final norm, the head                             |
| last_blocks:N     | the last N blocks, the final norm, the head                               |
| blocks:A-B        | blocks A..B (0-based, inclusive), the head; the final norm if B is the last block |
| all               | everything                                                                |
| lora              | LoRA on every linear layer (head included), plus the head's own weight and bias |
| lora_alternative  | the same with the merged-weight LoRA                                      |
| bias              | every bias of every module (BitFit), plus the head                        |
| norms             | every normalisation layer (torch's norm types and the final norm's type), plus the head |

The LoRA presets train the head's own weight and bias because the reference creates the head after
freezing the model and never freezes it.

Pause-model components (on a `ControlTokenLM`):

| component       | tensors                                                                 |
|-----------------|-------------------------------------------------------------------------|
| pause_embedding | `model.control_embeddings` (the delta rows of the control tokens)       |
| pause_head      | `model.pause_head` (weight, bias)                                       |
| lm_head         | the module returned by `get_output_embeddings()`                        |
| lm_embeddings   | the module returned by `get_input_embeddings()` (base vocabulary rows)  |
| lora            | the adapter sub-modules (`LoraLayer.adapter_layer_names`) of every peft LoRA layer |

Two choices change the model before they can name parameters, because those parameters do not exist
yet: the LoRA presets add the adapters, and training exactly one of a *tied* LM head / input embedding
unties them first (the LM head gets its own copy of the matrix and `tie_word_embeddings` becomes False,
so a saved model stays untied); the other one then stays bit-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models import lora as lora_lib
from unfreeze.models.structure import Structure

COMPONENTS: dict[str, str] = {
    "pause_embedding": "embedding rows of the control tokens (the delta next to the frozen base matrix)",
    "pause_head": "the pause head: linear, hidden -> control tokens + 'use the LM head'",
    "lm_head": "the LM output layer",
    "lm_embeddings": "the LM input token embeddings",
    "lora": "LoRA adapters on the body (the model must have been given LoRA)",
}


@dataclass
class Selection:
    """A choice resolved to the parameters it trains."""

    choice: list[str]  # the preset, or the components switched on
    params: list[nn.Parameter]
    untied: bool = False  # tied input/output embeddings were untied to honour the choice
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainableSummary:
    """Exactly which tensors train; printed by the recipes and recorded in metrics.json."""

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


# --- the three steps: choice -> parameters -> requires_grad -> counts ---------------------------------


def set_trainable(model: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """Train exactly `params` (parameters of `model`); freeze every other parameter of `model`."""
    chosen = {id(p) for p in params}
    owned = {id(p) for p in model.parameters()}
    if not chosen <= owned:  # a selection made for another model (or before it was rebuilt)
        raise ValueError(f"{len(chosen - owned)} selected parameter(s) are not parameters of the model")
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)


def trainable_summary(model: nn.Module, selection: Selection | None = None, planned: bool = False) -> TrainableSummary:
    """Names, shapes and counts of what trains in `model` now (from `requires_grad`), or, with `planned`, of
    what `selection` would train once applied."""
    chosen = {id(p) for p in selection.params} if planned and selection is not None else None
    names, shapes, trainable, total = [], [], 0, 0
    for name, param in model.named_parameters():  # yields a shared (tied) tensor once
        total += param.numel()
        if (id(param) in chosen) if chosen is not None else param.requires_grad:
            trainable += param.numel()
            names.append(name)
            shapes.append(tuple(param.shape))
    choice = selection.choice if selection is not None else []
    untied = selection.untied if selection is not None else False
    notes = list(selection.notes) if selection is not None else []
    return TrainableSummary(components=choice, tensors=names, shapes=shapes, trainable_params=trainable,
                            total_params=total, untied=untied, notes=notes)


def apply_preset(model: nn.Module, preset: str, lora_rank: int = 8, lora_alpha: float = 8,
                 seed: int | None = None, lora_layout: str = "reference") -> TrainableSummary:
    """`--trainable_layers preset` on a classifier, in place: select, apply, count."""
    selection = preset_selection(model, preset, lora_rank, lora_alpha, seed, lora_layout)
    set_trainable(model, selection.params)
    return trainable_summary(model, selection)


def apply_components(model: nn.Module, components: Iterable[str]) -> TrainableSummary:
    """Train exactly `components` (names from COMPONENTS) of a pause model, in place: select, apply, count."""
    selection = component_selection(model, components)
    set_trainable(model, selection.params)
    return trainable_summary(model, selection)


def _parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of `modules`, each once, in order."""
    return _unique(p for module in modules for p in module.parameters())


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


# --- the parts a choice names, read from any decoder model ---------------------------------------------


@dataclass
class ModelParts:
    """What a choice names, read from a model's modules (never from parameter names).

    `root` holds every parameter (`all`; `set_trainable` freezes the rest of it). `body` is the decoder stack
    (the Hugging Face base model); its `structure` (blocks, final norm) is read when first asked, because
    the pause components need only the embeddings and the output layer, and sft runs models whose stages
    classify cannot read. `output` is the output layer: unfreeze's classifier head, a causal LM's LM head,
    a sequence classifier's head (None for a bare base model).
    """

    root: nn.Module
    body: nn.Module
    output: nn.Module | None
    token_embedding: nn.Module | None
    known_structure: Structure | None = None

    @cached_property
    def structure(self) -> Structure:
        if self.known_structure is not None:
            return self.known_structure
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
    import dataclasses

    from unfreeze.models.classifier import DecoderClassifier

    if isinstance(model, DecoderClassifier):
        return ModelParts(model, model.body, model.head, model.structure.token_embedding, model.structure)
    inner = getattr(model, "hf_model", None)  # a pause model: the Hugging Face model it wraps
    if inner is None and _is_peft_model(model):
        inner = model.get_base_model()
    if isinstance(inner, nn.Module):
        return dataclasses.replace(model_parts(inner), root=model)
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


# --- classification presets ---------------------------------------------------------------------------

PRESETS = ("last_layer", "last_block", "last_two_blocks", "all", "lora", "lora_alternative", "bias", "norms")
PRESET_SYNTAX = "last_blocks:N (the last N blocks), blocks:A-B (blocks A to B, inclusive, 0-based)"
_LAST_BLOCKS = re.compile(r"last_blocks:(\d+)")
_BLOCK_RANGE = re.compile(r"blocks:(\d+)-(\d+)")
# torch's own normalisation layers; a model's own norm class (LlamaRMSNorm, ...) is the type of its final norm.
TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


def check_preset_syntax(preset: str, flag: str = "--trainable_layers") -> str:
    """A preset name, `last_blocks:N` or `blocks:A-B` (bounds are checked against the model later)."""
    if preset in PRESETS or _LAST_BLOCKS.fullmatch(preset) or _BLOCK_RANGE.fullmatch(preset):
        return preset
    raise UsageError(f"{flag} {preset!r}: invalid choice, not one of: {', '.join(PRESETS)}, or {PRESET_SYNTAX}")


def preset_blocks(preset: str, num_blocks: int, flag: str = "--trainable_layers") -> range | None:
    """The 0-based blocks a block preset trains (None for the other presets); bounds checked here."""
    fixed = {"last_block": 1, "last_two_blocks": 2}
    if preset in fixed:
        return range(max(num_blocks - fixed[preset], 0), num_blocks)
    if match := _LAST_BLOCKS.fullmatch(preset):
        count = int(match.group(1))
        if not 1 <= count <= num_blocks:
            raise UsageError(f"{flag} {preset}: N must be between 1 and the model's {num_blocks} blocks")
        return range(num_blocks - count, num_blocks)
    if match := _BLOCK_RANGE.fullmatch(preset):
        first, last = int(match.group(1)), int(match.group(2))
        if not first <= last < num_blocks:
            raise UsageError(f"{flag} {preset}: the model has blocks 0-{num_blocks - 1}; use blocks:A-B with "
                             f"A <= B <= {num_blocks - 1}")
        return range(first, last + 1)
    return None


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """Every normalisation layer of the decoder stack: torch's norm types, and the type of its final norm (its role)."""
    parts = model_parts(model)
    kinds = (*TORCH_NORMS, type(parts.structure.final_norm))
    return [m for m in parts.body.modules() if isinstance(m, kinds)]


def bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every module's bias (BitFit), the head's included."""
    return [m.bias for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)]


def preset_selection(model: nn.Module, preset: str, lora_rank: int = 8, lora_alpha: float = 8,
                     seed: int | None = None, lora_layout: str = "reference") -> Selection:
    """The parameters of one `--trainable_layers` preset of any model `model_parts` reads (LoRA presets add LoRA
    first, unless the model has LoRA layers already: a `PeftModel` trains its own adapters).

    Block presets train the named blocks and the output layer, and the final norm whenever the last block trains.
    """
    check_preset_syntax(preset)
    parts = model_parts(model)
    if preset in ("lora", "lora_alternative"):
        if not lora_lib.lora_modules(parts.root):
            add = lora_lib.add_lora if preset == "lora" else lora_lib.add_merged_lora
            add(parts.root, lora_rank, lora_alpha, seed=seed, layout=lora_layout)  # reference | peft: models/lora.py
            parts = model_parts(model)  # the output layer is wrapped now
        lora = _parameters(lora_lib.lora_modules(parts.root))
        return Selection([preset], _unique([*lora, *parts.output_parameters(preset)]), notes=_tied_note(parts))
    if preset == "all":
        return Selection([preset], _parameters([parts.root]))
    head, notes = parts.output_parameters(preset), _tied_note(parts)
    blocks = list(parts.structure.blocks)
    chosen = preset_blocks(preset, len(blocks))
    if chosen is not None:
        norm = [parts.structure.final_norm] if len(blocks) - 1 in chosen else []
        body = _parameters([*(blocks[i] for i in chosen), *norm])
        return Selection([preset], _unique([*body, *head]), notes=notes)
    if preset == "last_layer":
        return Selection([preset], head, notes=notes)
    selected = bias_parameters(parts.root) if preset == "bias" else _parameters(norm_modules(model))
    if {id(p) for p in selected} <= {id(p) for p in head}:
        what = {"bias": "bias terms", "norms": "normalisation parameters"}[preset]
        body = getattr(model, "body", None)  # unfreeze's classifier: its base model, and the head it adds
        name, only = (type(body).__name__, "the new head") if body is not None else (type(parts.root).__name__,
                                                                                      "the output layer")
        raise UsageError(f"--trainable_layers {preset}: {name} has no {what}, so only {only} would train; use "
                         "--trainable_layers last_layer for that")
    return Selection([preset], _unique([*selected, *head]), notes=notes)


def _tied_note(parts: ModelParts) -> list[str]:
    shared = parts.token_embedding is not None and parts.output is not None and any(
        p is q for p in trained_view(parts.output).parameters() for q in parts.token_embedding.parameters())
    return ["note: the output layer shares its weight with the input embeddings (tied), so training it trains "
            "them too"] if shared else []


# --- pause-model components ---------------------------------------------------------------------------


def component_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each component's parameters, located by module type/role."""
    from peft.tuners.lora import LoraLayer

    found = model_parts(model)
    parts: dict[str, list[nn.Parameter]] = {name: [] for name in COMPONENTS}
    if model.control_embeddings is not None:
        parts["pause_embedding"] = [model.control_embeddings]
        parts["pause_head"] = list(model.pause_head.parameters())
    parts["lm_head"] = found.output_parameters("lm_head")
    parts["lm_embeddings"] = list(found.token_embedding.parameters())
    for module in model.hf_model.modules():
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


def component_selection(model: nn.Module, components: Iterable[str]) -> Selection:
    """The parameters of the switched-on components of a `ControlTokenLM` (untying tied embeddings if needed)."""
    wanted = list(dict.fromkeys(components))
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise UsageError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    if not wanted:
        raise UsageError("nothing left to train: switch on at least one of unfreeze_pause_embedding, "
                         "unfreeze_pause_head, unfreeze_lm_head, unfreeze_lm_embeddings, lora")
    notes, untied = [], False
    if ("lm_head" in wanted) != ("lm_embeddings" in wanted):
        untied = untie_embeddings(model)
        if untied:
            only = "lm_head" if "lm_head" in wanted else "lm_embeddings"
            notes.append(f"note: input and output embeddings were tied; untied them so that only {only} trains")
    parts = component_parameters(model)
    chosen: dict[int, nn.Parameter] = {}
    for name in wanted:
        if not parts[name]:
            why = "the model has no control tokens (pause_token is null)" if name.startswith("pause") else (
                "the model has no LoRA adapter (set lora: true)")
            raise UsageError(f"cannot train {name}: {why}")
        chosen.update({id(p): p for p in parts[name]})
    return Selection(wanted, list(chosen.values()), untied, notes)
