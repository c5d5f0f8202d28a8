"""LoRA with the reference's math: the reference's layout (our own layers) or peft's (through `peft`).

The reference (LLMs-from-scratch appendix E / ch06 `additional_experiments.py`) computes, for every
linear layer including the new classification head,

    y = W x + b + alpha * (x @ A @ B),   A: (in, r) ~ kaiming_uniform(a=sqrt(5)),  B: (r, out) = 0

Both layouts use that math: scaling by `alpha` (peft multiplies by `lora_alpha / r`, so we pass
lora_alpha = alpha * r) and A drawn like the reference's (in, r) matrix, whose kaiming-uniform fan-in is
r: A ~ U(±1/sqrt(r)) (peft's A has shape (r, in), so we redraw it). They differ in where updates sit:

* `layout="reference"`: the reference's own GPT projects query, key and value with three linear layers,
  so each gets its own rank-r update. `transformers`' GPT-2 fuses them into one Conv1D, `c_attn`, whose
  output columns are [query | key | value]; here it gets three rank-r updates, one per column block, which
  is the reference's function and parameter count (GPT-2 small, r=16: 2,668,066 trainable with the head).
* `layout="peft"`: peft's plain layout, one rank-r update per layer, `c_attn` included.

Which layers are fused is read from the model's structure (a GPT-2 attention module's `c_attn` and its
`split_size`), never from parameter names.

`lora_alternative` is the reference's "merged" formulation: the effective weight W + alpha * (A @ B)^T
is formed in every forward pass (here with `torch.nn.utils.parametrize`) instead of adding a branch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D

from unfreeze.errors import UsageError

LAYOUTS = ("reference", "peft")


def linear_layers(model: nn.Module) -> list[str]:
    """Qualified names of every linear layer (nn.Linear and GPT-2's Conv1D), found by type."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D))]


def fused_blocks(model: nn.Module) -> dict[nn.Module, int]:
    """Layers that compute several projections at once -> how many column blocks their output has.

    GPT-2's attention computes its projections with one Conv1D `c_attn` whose output is split into pieces
    of `split_size` columns: query, key, value (3), or key, value (2) in cross-attention.
    """
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    return {m.c_attn: m.c_attn.nf // m.split_size for m in model.modules() if isinstance(m, GPT2Attention)}


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear ((out, in) weight) or a Conv1D ((in, out) weight)."""
    rows, cols = layer.weight.shape
    return (rows, cols) if isinstance(layer, Conv1D) else (cols, rows)


def _reference_a_init(weight: torch.Tensor, rank: int, generator: torch.Generator | None) -> None:
    """The reference's `kaiming_uniform_(A, a=sqrt(5))` on its (in, r) A, whose fan-in is r: U(±1/sqrt(r)).

    The bound is computed as `torch.nn.init` computes it and drawn with the same `uniform_` call, so with
    `generator=None` the values are bit-identical to the reference's draws from the global generator.
    """
    bound = math.sqrt(3.0) * nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(rank)
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)


def block_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The linear layers inside the model's repeated blocks (any nn.ModuleList), by qualified name; all of its
    linear layers when it has no such list. A classification head, whose width is the number of classes,
    sits outside the blocks: the reference gives its 2-output head a rank-16 update, so it is not bounded."""
    inside = {name for list_name, module in model.named_modules() if isinstance(module, nn.ModuleList)
              for name, _ in module.named_modules(prefix=list_name)}
    layers = {name: model.get_submodule(name) for name in linear_layers(model)}
    blocks = {name: layer for name, layer in layers.items() if name in inside}
    return blocks or layers


def check_rank(model_or_layers: nn.Module | Mapping[str, nn.Module], rank: int, flag: str) -> None:
    """A rank above min(in_features, out_features) of an adapted layer adds parameters but no expressive power
    (A @ B can have no higher rank than that), and on a narrow model trains more than the model has: refused,
    naming the narrowest layer and the largest rank allowed.

    `model_or_layers`: a model (its block layers are bounded, see `block_layers`) or the layers that get an
    update, by name.
    """
    layers = block_layers(model_or_layers) if isinstance(model_or_layers, nn.Module) else dict(model_or_layers)
    layers = {name: layer for name, layer in layers.items() if getattr(getattr(layer, "weight", None), "ndim", 0) == 2}
    if not layers:
        return
    name, layer = min(layers.items(), key=lambda item: min(layer_shape(item[1])))
    in_features, out_features = layer_shape(layer)
    largest = min(in_features, out_features)
    if rank > largest:
        raise UsageError(f"{flag} {rank} exceeds the width of layer {name} ({in_features} in, {out_features} out): "
                         f"a LoRA update has rank at most {largest} there, so the rest would train parameters that add "
                         f"nothing; use {flag} {largest} or less")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


class LoRAUpdate(nn.Module):
    """alpha * x @ A @ B with the reference's shapes and init: A (in, r) ~ U(±1/sqrt(r)), B (r, out) = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_features, rank))
        _reference_a_init(self.A, rank, generator)
        self.B = nn.Parameter(torch.zeros(rank, out_features))
        self.alpha = alpha

    def delta(self) -> torch.Tensor:
        """alpha * A @ B, shape (in, out)."""
        return self.alpha * (self.A @ self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x @ self.A @ self.B)


def _updates(layer: nn.Module, blocks: int, rank: int, alpha: float,
             generator: torch.Generator | None) -> nn.ModuleList:
    """One update per column block of the layer's output (one block: one update for the whole layer)."""
    in_features, out_features = layer_shape(layer)
    if out_features % blocks:
        raise ValueError(f"{out_features} output features do not split into {blocks} blocks")
    return nn.ModuleList(LoRAUpdate(in_features, out_features // blocks, rank, alpha, generator)
                         for _ in range(blocks))


class LoRALayer(nn.Module):
    """base_layer(x) + [update_1(x) | ... | update_k(x)]: each update covers its own block of output columns."""

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, blocks: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.updates = _updates(base_layer, blocks, rank, alpha, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same function as base(x) + [alpha * x @ A_i @ B_i]_i, in as few kernels as possible: one matmul
        # x @ [A_1|...|A_k], one addmm with the block-diagonal diag(B_1, ..., B_k) that scales by alpha and adds
        # the base output. On a busy CPU every kernel costs a thread wake-up (~20 ms measured with 2 threads
        # under load), so the k separate updates with their scaling, concatenation and sum made LoRA twice
        # as slow as training every weight (benchmarks/bench_lora.py).
        updates = list(self.updates)
        a = updates[0].A if len(updates) == 1 else torch.cat([u.A for u in updates], dim=1)
        b = updates[0].B if len(updates) == 1 else torch.block_diag(*[u.B for u in updates])
        base = self.base_layer(x)
        flat = torch.addmm(base.reshape(-1, base.shape[-1]), x.reshape(-1, x.shape[-1]) @ a, b, alpha=updates[0].alpha)
        return flat.view(base.shape)


def add_lora(model: nn.Module, rank: int, alpha: float, seed: int | None = None,
             layout: str = "reference", flag: str = "--lora_rank", targets: list[str] | None = None) -> list[str]:
    """LoRA on every linear layer of `model` (in place), or on `targets` (qualified names of some of them: the
    blocks `lora:BLOCKS` names); returns the adapted names.

    `seed` None draws the A matrices from torch's global generator in module order, as the reference's
    `replace_linear_with_lora` does. Only the LoRA matrices stay trainable. `layout` (see the module
    docstring): "reference" wraps each layer in a `LoRALayer` (three updates on GPT-2's fused `c_attn`),
    "peft" injects peft's LoRA. A rank the model's layers cannot use is refused first, naming `flag`.
    """
    _check_layout(layout)
    targets = _targets(model, rank, flag, targets)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if layout == "peft":
        _add_peft_lora(model, targets, rank, alpha, generator)
        return targets
    blocks = fused_blocks(model)
    for param in model.parameters():
        param.requires_grad = False
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        layer = model.get_submodule(name)
        setattr(model.get_submodule(parent_name), child, LoRALayer(layer, rank, alpha, blocks.get(layer, 1), generator))
    return targets


def _targets(model: nn.Module, rank: int, flag: str, targets: list[str] | None) -> list[str]:
    """The layers to adapt (every linear layer unless named), their rank checked first."""
    if targets is None:
        check_rank(model, rank, flag)
        return linear_layers(model)
    check_rank({name: model.get_submodule(name) for name in targets}, rank, flag)
    return list(targets)


def _add_peft_lora(model: nn.Module, targets: list[str], rank: int, alpha: float,
                   generator: torch.Generator | None) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha * rank, lora_dropout=0.0, bias="none", target_modules=targets)
    with warnings.catch_warnings():
        # peft warns while it switches fan_in_fan_out between Conv1D and Linear layers; that switch is
        # exactly what we want (checked by the LoRA math test).
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        inject_adapter_in_model(config, model)
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            _reference_a_init(lora_a["default"].weight, rank, generator)


class MergedLoRAWeight(nn.Module):
    """weight -> weight + [delta_1 | ... | delta_k] (column blocks of the (in, out) update; transposed for
    nn.Linear, whose weight is (out, in))."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float, blocks: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.updates = _updates(layer, blocks, rank, alpha, generator)
        self.transpose = not isinstance(layer, Conv1D)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        deltas = [update.delta() for update in self.updates]
        delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=1)
        return weight + (delta.T if self.transpose else delta)


def add_merged_lora(model: nn.Module, rank: int, alpha: float, seed: int | None = None,
                    layout: str = "reference", flag: str = "--lora_rank",
                    targets: list[str] | None = None) -> list[str]:
    """The reference's `lora_alternative`: the same function as `add_lora` (same layout), computed on the weight."""
    _check_layout(layout)
    targets = _targets(model, rank, flag, targets)
    blocks = fused_blocks(model) if layout == "reference" else {}
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for param in model.parameters():
        param.requires_grad = False
    for name in targets:
        module = model.get_submodule(name)
        merged = MergedLoRAWeight(module, rank, alpha, blocks.get(module, 1), generator)
        parametrize.register_parametrization(module, "weight", merged)
    return targets


def lora_modules(model: nn.Module) -> list[nn.Module]:
    """Every module holding LoRA matrices (our updates, in either form, or peft's layers)."""
    found = []
    for module in model.modules():
        if isinstance(module, LoRAUpdate):
            found.append(module)
        elif isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
            found.extend([module.lora_A, module.lora_B])
    return found


# --- reading the updates back: for saving a trained model in plain or peft form -------------------------


def lora_factors(layer: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]] | None:
    """A LoRA-adapted layer's updates as (A (in, r), B (r, out), scale), in column-block order: unfreeze's (either
    form) or peft's (whose A is stored (r, in) and B (out, r)); None for a layer without LoRA."""
    if isinstance(layer, LoRALayer):
        return [(u.A, u.B, float(u.alpha)) for u in layer.updates]
    if parametrize.is_parametrized(layer, "weight"):
        merged = [m for m in layer.parametrizations.weight if isinstance(m, MergedLoRAWeight)]
        if merged:
            return [(u.A, u.B, float(u.alpha)) for u in merged[0].updates]
    lora_a = getattr(layer, "lora_A", None)
    if isinstance(lora_a, nn.ModuleDict) and len(lora_a):
        name = layer.active_adapters[0]
        return [(lora_a[name].weight.T, layer.lora_B[name].weight.T, float(layer.scaling[name]))]
    return None


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The weight before any LoRA update, in the layer's own layout."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return getattr(layer, "base_layer", layer).weight


def merged_weight(layer: nn.Module) -> torch.Tensor:
    """The weight with its LoRA update(s) folded in, in the base layer's layout ((in, out) for Conv1D)."""
    factors = lora_factors(layer)
    weight = base_weight(layer).detach()
    if factors is None:
        return weight
    delta = torch.cat([scale * (a @ b) for a, b, scale in factors], dim=1).detach()  # (in, out)
    return weight + (delta if isinstance(getattr(layer, "base_layer", layer), Conv1D) else delta.T)


def plain_state_dict(model: nn.Module, merged: bool = True) -> dict[str, torch.Tensor]:
    """`model`'s state dict as the model without LoRA names it: every adapted layer contributes its base layer's
    tensors under its own name, its weight with the update folded in when `merged` (else as it was before LoRA)."""
    state: dict[str, torch.Tensor] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if lora_factors(module) is not None:
            base = getattr(module, "base_layer", module)
            state[prefix + "weight"] = merged_weight(module) if merged else base_weight(module).detach()
            for name, param in base._parameters.items():
                if param is not None and name != "weight":
                    state[prefix + name] = param.detach()
            return
        for name, param in module._parameters.items():
            if param is not None:
                state[prefix + name] = param.detach()
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                state[prefix + name] = buffer.detach()
        for name, child in module._modules.items():
            if child is not None and name != "parametrizations":
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    return state


def adapted_layers(model: nn.Module) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]:
    """Every LoRA-adapted layer of `model` by qualified name, with its updates (`lora_factors`)."""
    found = {}
    for name, module in model.named_modules():
        factors = lora_factors(module)
        if factors is not None:
            found[name] = factors
    return found
