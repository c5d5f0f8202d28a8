"""What trains: the one place that turns a choice into a set of parameters and sets `requires_grad`.

A choice is written in one vocabulary for every task (`unfreeze classify` and `unfreeze sft`
`--trainable_layers`, `unfreeze export`, `unfreeze.select`; the grammar is `models/choice.py`), plus, in
sft, the pause switches (`unfreeze_*`, `lora`), which join it. Every word is resolved from module
structure, never from parameter-name substrings, into a `Selection`; `set_trainable` trains exactly those
parameters and freezes the rest; `trainable_summary` counts what trains (a shared tensor once).

The parts a word names are read by `model_parts` from any decoder model (unfreeze's `DecoderClassifier`, a
pause model, a Hugging Face `*ForCausalLM` / `*ForSequenceClassification` / base model, a peft
`PeftModel`): the blocks and the final norm from the decoder stack's structure, a block's attention and MLP
by `models/block_parts.py`, the *output layer* (classify's new head, a causal LM's LM head, a sequence
classifier's `score`), the input embeddings (`get_input_embeddings()`), and a pause model's own tensors.

| word                  | trains                                                                          |
|-----------------------|---------------------------------------------------------------------------------|
| last_layer            | the output layer                                                                |
| last_block            | the last block, the final norm, the output layer                                |
| last_two_blocks       | the last two blocks, the final norm, the output layer                           |
| last_blocks:N         | the last N blocks, the final norm, the output layer                             |
| blocks:SET            | blocks SET (3,7,9-11; 0-based), the output layer; the final norm with the last block |
| all                   | everything                                                                      |
| bias                  | every bias of the decoder (BitFit), the output layer                            |
| norms                 | every normalisation layer of the decoder, the output layer                      |
| lora                  | LoRA on every linear layer (the output layer's too), and the output layer       |
| lora_alternative      | the same with the merged-weight LoRA (classify)                                 |
| attention:BLOCKS      | the attention module of each of those blocks (only it)                          |
| mlp:BLOCKS            | the feed-forward of each of those blocks (only it)                              |
| lora:BLOCKS           | LoRA on the linear layers of those blocks (only the adapters)                   |
| embeddings            | the input embeddings; in sft also the rows of the tokens the run adds           |
| new_tokens            | only the rows of the tokens the run adds (sft's pause token), a delta           |
| pause_head            | sft's pause head                                                                |

BLOCKS is last_block, last_two_blocks, last_blocks:N, blocks:SET or all. The presets (the first ten words,
today's) train the output layer too, as they always have; the parts (the last six) train only what they
name: join `+last_layer` for the output layer. Classify's head is new, so it trains under every choice. In
sft, `lora` puts the adapter on `lora_target_modules` (peft), and the switches map onto words: lm_head =
the output layer, lm_embeddings = the input embeddings' base rows, pause_embedding = new_tokens,
pause_head, lora = the adapters.

Two choices change the model before they can name parameters: LoRA adds the adapters (unless the model has
them: a PeftModel, a pause model given `lora`), and, in a pause model, training exactly one of a *tied* LM
head / input embedding unties them (the LM head gets its own copy, `tie_word_embeddings` becomes False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models import block_parts
from unfreeze.models import lora as lora_lib
from unfreeze.models.choice import PRESETS, SYNTAX, Term, check_syntax, parse_choice
from unfreeze.models.parts import ModelParts, model_parts, trained_view  # noqa: F401 - the parts' one place, here too

COMPONENTS: dict[str, str] = {
    "pause_embedding": "embedding rows of the control tokens (the delta next to the frozen base matrix)",
    "pause_head": "the pause head: linear, hidden -> control tokens + 'use the LM head'",
    "lm_head": "the LM output layer",
    "lm_embeddings": "the LM input token embeddings",
    "lora": "LoRA adapters on the body (the model must have been given LoRA)",
}
# The switches as words: (kind, preset) of the Term each stands for.
_COMPONENT_TERMS = {"pause_embedding": "new_tokens", "pause_head": "pause_head", "lm_head": "last_layer",
                    "lm_embeddings": "base_embeddings", "lora": "adapters"}
PRESET_SYNTAX = SYNTAX
TORCH_NORMS = block_parts.TORCH_NORMS


@dataclass
class Selection:
    """A choice resolved to the parameters it trains."""

    choice: list[str]  # the words of the choice (and the switches switched on)
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
    """`--trainable_layers CHOICE` on a classifier, in place: select, apply, count."""
    selection = preset_selection(model, preset, lora_rank, lora_alpha, seed, lora_layout)
    set_trainable(model, selection.params)
    return trainable_summary(model, selection)


def apply_components(model: nn.Module, components: Iterable[str], choice: str | None = None) -> TrainableSummary:
    """Train exactly `components` (names from COMPONENTS) of a pause model, joined with the words of `choice`,
    in place: select, apply, count."""
    selection = component_selection(model, components, choice)
    set_trainable(model, selection.params)
    return trainable_summary(model, selection)


def _parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of `modules`, each once, in order."""
    return _unique(p for module in modules for p in module.parameters())


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


# --- words -> parameters --------------------------------------------------------------------------------


def check_preset_syntax(preset: str, flag: str = "--trainable_layers") -> str:
    """A choice that parses (`models/choice.py`); bounds are checked against the model later."""
    return check_syntax(preset, flag)


def preset_blocks(preset: str, num_blocks: int, flag: str = "--trainable_layers") -> list[int] | None:
    """The 0-based blocks the choice's block terms name (None when it has none); every term's bounds checked."""
    found: set[int] = set()
    named = False
    for term in parse_choice(preset, flag):
        if term.blocks is not None:
            found.update(term.blocks.indices(num_blocks, flag, term.text))
            named = True
    return sorted(found) if named else None


def check_choice(model: nn.Module, choice: str | list[Term], flag: str = "--trainable_layers") -> list[Term]:
    """What can be checked of a choice on a model without changing it (the meta device will do): its blocks exist,
    every block's attention or MLP it names can be read, `bias`/`norms` name more than the output layer. LoRA is
    not added (its rank is `lora.check_rank`'s); returns the terms."""
    terms = parse_choice(choice, flag) if isinstance(choice, str) else list(choice)
    parts = model_parts(model)
    for term in terms:
        if term.kind in ("blocks", "attention", "mlp"):
            _block_modules(parts, term, flag)
        elif term.blocks is not None:
            term.blocks.indices(len(parts.structure.blocks), flag, term.text)
        elif term.kind in ("bias", "norms"):
            term_parameters(parts, term, flag)
    return terms


def norm_modules(model: nn.Module | ModelParts) -> list[nn.Module]:
    """Every normalisation layer of the decoder stack: torch's norm types, and the type of its final norm (its role)."""
    parts = model if isinstance(model, ModelParts) else model_parts(model)
    kinds = (*TORCH_NORMS, type(parts.structure.final_norm))
    return [m for m in parts.body.modules() if isinstance(m, kinds)]


def bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every module's bias (BitFit), the head's included."""
    return [m.bias for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)]


def _block_modules(parts: ModelParts, term: Term, flag: str) -> list[nn.Module]:
    """The modules `term` names inside its blocks: whole blocks, or each block's attention or MLP."""
    blocks = parts.structure.blocks
    indices = term.blocks.indices(len(blocks), flag, term.text)
    if term.kind == "blocks":
        return [blocks[i] for i in indices] + ([parts.structure.final_norm] if len(blocks) - 1 in indices else [])
    norm_types = (type(parts.structure.final_norm),)
    return [m for i in indices for m in block_parts.block_part(parts.body, blocks, i, term.kind, flag, term.text,
                                                                  norm_types)]


def _adapters(parts: ModelParts, term: Term, flag: str) -> list[nn.Parameter]:
    """LoRA's own parameters (of the chosen blocks, for lora:BLOCKS)."""
    where = parts.root if term.blocks is None else nn.ModuleList(_block_modules(parts, Term("blocks", term.text,
                                                                                              term.blocks), flag))
    found = _parameters(lora_lib.lora_modules(where))
    if not found:
        raise UsageError(f"cannot train {term.text}: the model has no LoRA adapter" +
                         (" (set lora: true)" if parts.pause is not None else ""))
    return found


def _pause_tensors(parts: ModelParts, term: Term) -> list[nn.Parameter]:
    pause = parts.pause
    if pause is None or pause.control_embeddings is None:
        why = ("the model has no control tokens (pause_token is null)" if pause is not None else
               "only sft adds tokens (its pause token); this model has none")
        raise UsageError(f"cannot train {term.text}: {why}")
    return [pause.control_embeddings] if term.kind == "new_tokens" else list(pause.pause_head.parameters())


def _body_only(parts: ModelParts, term: Term, selected: list[nn.Parameter], flag: str) -> list[nn.Parameter]:
    """`bias`/`norms` must name something besides the output layer (else only the head would train)."""
    head = {id(p) for p in parts.output_parameters(term.text)}
    if {id(p) for p in selected} <= head:
        what = {"bias": "bias terms", "norms": "normalisation parameters"}[term.kind]
        name, only = (type(parts.body).__name__, "the new head") if parts.new_head else (type(parts.root).__name__,
                                                                                          "the output layer")
        raise UsageError(f"{flag} {term.kind}: {name} has no {what}, so only {only} would train; use "
                         f"{flag} last_layer for that")
    return selected


def term_parameters(parts: ModelParts, term: Term, flag: str = "--trainable_layers") -> list[nn.Parameter]:
    """The parameters one word names on the model of `parts` (the output layer included for presets)."""
    kind = term.kind
    if kind == "all":
        return _parameters([parts.root])
    if kind in ("blocks", "attention", "mlp"):
        found = _parameters(_block_modules(parts, term, flag))
    elif term.lora or kind == "adapters":
        found = _adapters(parts, term, flag)
    elif kind == "bias":
        found = _body_only(parts, term, [m.bias for m in parts.body.modules()
                                         if isinstance(getattr(m, "bias", None), nn.Parameter)]
                           + parts.output_parameters(kind), flag)
    elif kind == "norms":
        found = _body_only(parts, term, _parameters(norm_modules(parts)) + parts.output_parameters(kind), flag)
    elif kind in ("embeddings", "base_embeddings"):
        found = list(parts.token_embedding.parameters())
        if kind == "embeddings" and parts.pause is not None and parts.pause.control_embeddings is not None:
            found.append(parts.pause.control_embeddings)
    elif kind in ("new_tokens", "pause_head"):
        found = _pause_tensors(parts, term)
    else:  # last_layer
        found = []
    return _unique([*found, *(parts.output_parameters(term.text) if term.preset else [])])


def _add_lora(model: nn.Module, parts: ModelParts, term: Term, rank: int, alpha: float, seed: int | None,
              layout: str, flag: str) -> ModelParts:
    """Give a model without LoRA its adapters: every linear layer (`lora`), or those of the chosen blocks."""
    if lora_lib.lora_modules(parts.root):
        return parts  # a PeftModel (or a pause model given `lora`) trains the adapters it has
    if parts.pause is not None:
        raise UsageError(f"cannot train {term.text}: the model has no LoRA adapter (set lora: true)")
    targets = None
    if term.blocks is not None:
        inside = {id(m) for block in _block_modules(parts, Term("blocks", term.text, term.blocks), flag)
                  for m in block.modules()}
        targets = [name for name in lora_lib.linear_layers(parts.root) if id(parts.root.get_submodule(name)) in inside]
    add = lora_lib.add_lora if term.kind == "lora" else lora_lib.add_merged_lora
    add(parts.root, rank, alpha, seed=seed, layout=layout, targets=targets)  # reference | peft: models/lora.py
    return model_parts(model)  # the output layer may be wrapped now


def _trains_tied_output(parts: ModelParts, chosen: list[nn.Parameter]) -> bool:
    if parts.output is None or parts.token_embedding is None:
        return False
    output = {id(p) for p in trained_view(parts.output).parameters()}
    shared = output & {id(p) for p in parts.token_embedding.parameters()}
    return bool(shared & {id(p) for p in chosen})


def _untie_if_one(parts: ModelParts, terms: list[Term]) -> tuple[bool, list[str]]:
    """A pause model trains exactly one of a tied LM head and input embedding: untie them first."""
    if parts.pause is None:
        return False, []
    kinds = {t.kind for t in terms}
    output = any(t.preset and t.kind != "all" for t in terms)
    embeddings = bool(kinds & {"embeddings", "base_embeddings"})
    if "all" in kinds or output == embeddings or not untie_embeddings(parts.pause):
        return False, []
    said = ("the output layer trains without the input embeddings" if output else
            "the input embeddings train without the output layer")
    return True, [f"note: input and output embeddings were tied; untied them so that {said}"]


def choice_selection(model: nn.Module, terms: list[Term], lora_rank: int = 8, lora_alpha: float = 8,
                     seed: int | None = None, lora_layout: str = "reference", flag: str = "--trainable_layers",
                     with_output: bool = False) -> Selection:
    """The parameters of `terms` (parsed words) on any model `model_parts` reads. `with_output`: the output layer
    trains whatever the words say (a new head; unfreeze's classifier always)."""
    parts = model_parts(model)
    adapter = next((t for t in terms if t.lora), None)
    if adapter is not None:
        parts = _add_lora(model, parts, adapter, lora_rank, lora_alpha, seed, lora_layout, flag)
    untied, notes = _untie_if_one(parts, terms)
    chosen = [p for term in terms for p in term_parameters(parts, term, flag)]
    if with_output or parts.new_head:
        chosen += parts.output_parameters(flag)
    if _trains_tied_output(parts, chosen) and "all" not in {t.kind for t in terms}:
        notes.append("note: the output layer shares its weight with the input embeddings (tied), so training it "
                     "trains them too")
    return Selection([t.text for t in terms], _unique(chosen), untied, notes)


def preset_selection(model: nn.Module, preset: str, lora_rank: int = 8, lora_alpha: float = 8,
                     seed: int | None = None, lora_layout: str = "reference", with_output: bool = False) -> Selection:
    """The parameters of one choice (`a+b`, see the module docstring) of any model `model_parts` reads."""
    return choice_selection(model, parse_choice(preset), lora_rank, lora_alpha, seed, lora_layout,
                            with_output=with_output)


# --- the pause switches ----------------------------------------------------------------------------------


def component_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each component's parameters, located by module type/role (empty where the model has none)."""
    parts = model_parts(model)
    found: dict[str, list[nn.Parameter]] = {}
    for name, kind in _COMPONENT_TERMS.items():
        try:
            found[name] = term_parameters(parts, Term(kind, name, preset=False))
        except UsageError:
            found[name] = []
    found["lm_head"] = parts.output_parameters("lm_head")
    return found


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


def component_selection(model: nn.Module, components: Iterable[str], choice: str | None = None,
                        flag: str = "trainable_layers") -> Selection:
    """The parameters of the switched-on components of a `ControlTokenLM` and of the words of `choice` (untying
    tied embeddings where exactly one of them trains)."""
    wanted = list(dict.fromkeys(components))
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise UsageError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    terms = parse_choice(choice, flag) if choice else []
    if not wanted and not terms:
        raise UsageError("nothing left to train: switch on at least one of unfreeze_pause_embedding, "
                         "unfreeze_pause_head, unfreeze_lm_head, unfreeze_lm_embeddings, lora, or set trainable_layers")
    switched = [Term(_COMPONENT_TERMS[name], name, preset=name == "lm_head") for name in wanted]
    return choice_selection(model, [*terms, *switched], flag=flag)


__all__ = ["COMPONENTS", "PRESETS", "PRESET_SYNTAX", "ModelParts", "Selection", "TrainableSummary", "apply_components",
           "apply_preset", "bias_parameters", "check_preset_syntax", "choice_selection", "component_parameters",
           "component_selection", "model_parts", "norm_modules", "preset_blocks", "preset_selection", "set_trainable",
           "term_parameters", "trainable_summary", "trained_view", "untie_embeddings"]
