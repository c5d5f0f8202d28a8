"""A choice of what trains, in the form a training stack needs it, read from a model the choice was made on.

`plan_of(model, selection)` walks the module tree the way the model is saved and loaded elsewhere: a LoRA
layer (peft's or unfreeze's) counts as its base layer plus an adapter, peft's `modules_to_save` wrapper
as the copy it trains, a parametrised weight (`lora_alternative`) as the weight plus an adapter. So the
names are those of the plain Hugging Face model (`model.layers.3.mlp.up_proj.weight`), which every stack
matches against, and what trains is said four ways:

* `modules`: the largest modules every parameter of which trains (a block, the final norm, the head);
* `tensors`: tensors that train without the rest of their module (BitFit's biases);
* `token_rows`: rows of an embedding matrix that train alone (a new token's row);
* `lora`: the layers that get a LoRA update, with its rank and scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D

from unfreeze.errors import UsageError
from unfreeze.models import lora as lora_lib
from unfreeze.models.trainable import Selection, model_parts, trainable_summary


@dataclass
class Adapted:
    """A LoRA-adapted layer: the update is `scale * (B A)` of rank `rank`, split in `updates` column blocks
    (unfreeze's reference layout on GPT-2's fused c_attn: three)."""

    rank: int
    scale: float
    updates: int = 1
    param_ids: set[int] = field(default_factory=set, repr=False)


@dataclass
class TrainPlan:
    """What trains, in the plain model's names (tied tensors under their first name)."""

    choice: str
    model_type: str
    task: str  # "causal_lm" or "seq_cls": which transformers head the names belong to
    names: list[str]  # the trainable tensors as the model itself names them (LoRA adapters included)
    plain_names: list[str]  # every tensor of the plain model: what other stacks match their rules against
    trained: list[str]  # the trained tensors of the plain model (LoRA adapters are not in it)
    modules: list[str]
    tensors: list[str]
    token_rows: dict[str, list[int]] = field(default_factory=dict)  # embedding module -> rows
    lora: dict[str, Adapted] = field(default_factory=dict)
    lora_dropout: float = 0.0
    blocks: str | None = None  # qualified name of the blocks' list ("model.layers"); None if unread
    num_blocks: int = 0
    transposed: list[str] = field(default_factory=list)  # layers whose weight is stored (in, out): GPT-2's Conv1D
    shared: list[str] = field(default_factory=list)  # trained tensors with several names (tied embeddings)
    untranslatable: list[str] = field(default_factory=list)  # parts no other stack has (the pause head)
    notes: list[str] = field(default_factory=list)
    base_model: str | None = None  # how the user named the model (adapter_config's base_model_name_or_path)


@dataclass
class _Tree:
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # every plain name, tied tensors under each
    lora: dict[str, Adapted] = field(default_factory=dict)
    dropout: float = 0.0
    transposed: list[str] = field(default_factory=list)  # GPT-2's Conv1D layers: weight stored (in, out)


def _walk(module: nn.Module, prefix: str, tree: _Tree) -> None:
    from peft.tuners.lora import LoraLayer

    name = prefix[:-1]
    if isinstance(module, LoraLayer):  # peft: base_layer + adapters
        active = module.active_adapters[0]
        ids = {id(p) for attr in module.adapter_layer_names for p in getattr(module, attr).parameters()}
        tree.lora[name] = Adapted(int(module.r[active]), float(module.scaling[active]), 1, ids)
        tree.dropout = float(getattr(module.lora_dropout[active], "p", 0.0))
        return _walk(module.base_layer, prefix, tree)
    if isinstance(module, lora_lib.LoRALayer):  # unfreeze's reference layout
        first = module.updates[0]
        tree.lora[name] = Adapted(first.A.shape[1], float(first.alpha), len(module.updates),
                                  {id(p) for p in module.updates.parameters()})
        return _walk(module.base_layer, prefix, tree)
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict):  # peft's modules_to_save wrapper: the copy it trains
        return _walk(copies[module.active_adapters[0]], prefix, tree)
    if parametrize.is_parametrized(module):  # lora_alternative: weight + merged update
        for weight_name, chain in module.parametrizations.items():
            tree.params[prefix + weight_name] = chain.original
            for merged in chain:
                if isinstance(merged, lora_lib.MergedLoRAWeight):
                    first = merged.updates[0]
                    tree.lora[name] = Adapted(first.A.shape[1], float(first.alpha), len(merged.updates),
                                              {id(p) for p in merged.updates.parameters()})
    if isinstance(module, Conv1D):
        tree.transposed.append(name)
    for param_name, param in module._parameters.items():
        if param is not None:
            tree.params[prefix + param_name] = param
    for child_name, child in module._modules.items():
        if child is not None and child_name != "parametrizations":
            _walk(child, f"{prefix}{child_name}.", tree)


def plain_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a pause model or a PeftModel (else `model`)."""
    inner = getattr(model, "hf_model", None)
    if isinstance(inner, nn.Module):
        return inner
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _covering_modules(params: dict[str, nn.Parameter], chosen: set[int]) -> list[str]:
    """The largest modules all of whose tensors are chosen, in model order (an ancestor comes before its parts)."""
    owned: dict[str, list[int]] = {}
    for name, param in params.items():
        pieces = name.split(".")
        for depth in range(1, len(pieces)):
            owned.setdefault(".".join(pieces[:depth]), []).append(id(param))
    covered: list[str] = []
    for module, ids in owned.items():
        if not any(module.startswith(done + ".") for done in covered) and all(i in chosen for i in ids):
            covered.append(module)
    return covered


def _module_name(root: nn.Module, target: nn.Module | None) -> str | None:
    return next((name for name, module in root.named_modules() if module is target), None) if target else None


def plan_of(model: nn.Module, selection: Selection, choice: str | None = None, task: str | None = None) -> TrainPlan:
    """The plan of `selection` (parameters of `model`, a transformers model, a PeftModel or a pause model)."""
    root = plain_model(model)
    tree = _Tree()
    _walk(root, "", tree)
    chosen = {id(p) for p in selection.params}
    first_names: dict[int, str] = {}
    counts: dict[int, int] = {}
    for name, param in tree.params.items():
        first_names.setdefault(id(param), name)
        counts[id(param)] = counts.get(id(param), 0) + 1
    plain = list(first_names.values())
    trained = [name for i, name in first_names.items() if i in chosen]
    modules = _covering_modules(tree.params, chosen)
    inside = tuple(f"{m}." for m in modules)
    tensors = [name for name in trained if not name.startswith(inside)]
    lora = {layer: a for layer, a in tree.lora.items() if a.param_ids & chosen}
    parts = model_parts(model)
    try:
        blocks, count = _module_name(root, parts.structure.blocks), len(parts.structure.blocks)
    except UsageError:  # a model whose stages cannot be read: no block-based form (LLaMA-Factory)
        blocks, count = None, 0
    config = getattr(root, "config", None)
    if task is None:
        task = "causal_lm" if getattr(root, "get_output_embeddings", lambda: None)() is not None else "seq_cls"
    return TrainPlan(choice=choice or ",".join(selection.choice), model_type=getattr(config, "model_type", "?"),
                     task=task, names=trainable_summary(model, selection, planned=True).tensors, plain_names=plain,
                     trained=trained, modules=modules, tensors=tensors, lora=lora, lora_dropout=tree.dropout,
                     blocks=blocks, num_blocks=count, transposed=tree.transposed, notes=list(selection.notes),
                     shared=[name for i, name in first_names.items() if i in chosen and counts[i] > 1],
                     base_model=getattr(config, "_name_or_path", None) or None)


def pause_plan(model: nn.Module, components: list[str]) -> TrainPlan:
    """The plan of what trains in a pause model (`requires_grad`), named as in its saved plain causal LM of
    V + n tokens (`models/control/folder.py`): the control tokens' rows of the input embedding matrix train
    alone; the pause head is unfreeze's own and has no form elsewhere."""
    trained = [p for p in model.parameters() if p.requires_grad]
    plan = plan_of(model, Selection(list(components), trained), task="causal_lm")
    hf = model.hf_model
    ids = {id(p) for p in trained}
    rows = []
    if model.control_embeddings is not None and id(model.control_embeddings) in ids:
        embedding = _module_name(hf, hf.get_input_embeddings())
        plan.token_rows = {embedding: list(model.control_token_ids)}
        start, end = model.control_token_ids[0], model.control_token_ids[-1] + 1
        rows = [f"{embedding}.weight[{start}:{end}]"]
    own = [f"pause_head.{name}" for name, p in model.pause_head.named_parameters() if id(p) in ids] \
        if model.pause_head is not None else []
    if own:
        plan.untranslatable.append("the pause head (pause_head.weight, pause_head.bias in control_tokens.safetensors)")
    lora = [name for name, p in hf.named_parameters() if id(p) in ids and name not in plan.trained]
    plan.names = [*plan.trained, *rows, *lora, *own]
    return plan
