"""LoRA with the reference's math, through `peft` (and a merged-weight variant).

The reference (LLMs-from-scratch appendix E / ch06 `additional_experiments.py`) computes, for every
linear layer including the new classification head,

    y = W x + b + alpha * (x @ A @ B),   A: (in, r) ~ kaiming_uniform(a=sqrt(5)),  B: (r, out) = 0

Two differences from peft's defaults, both mapped here so the math is the same:
  * scaling: peft multiplies by `lora_alpha / r`, the reference by `alpha`  ->  lora_alpha = alpha * r;
  * init of A: the reference's A has shape (in, r), so kaiming-uniform's fan-in is r and A ~ U(±1/sqrt(r));
    peft's A has shape (r, in), giving U(±1/sqrt(in)). We redraw peft's A from U(±1/sqrt(r)).
One difference we keep, and document: GPT-2 in `transformers` fuses query/key/value into one layer
(`c_attn`), so it gets one rank-r update where the reference has three (one per projection).

`lora_alternative` is the reference's "merged" formulation: the effective weight W + alpha * (A @ B)^T
is formed in every forward pass (here with `torch.nn.utils.parametrize`) instead of adding a branch.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D


def linear_layers(model: nn.Module) -> list[str]:
    """Qualified names of every linear layer (nn.Linear and GPT-2's Conv1D), found by type."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D))]


def _reference_a_init(weight: torch.Tensor, rank: int, generator: torch.Generator | None) -> None:
    bound = 1.0 / math.sqrt(rank)
    with torch.no_grad():
        weight.copy_(torch.rand(weight.shape, generator=generator) * (2 * bound) - bound)


def add_lora(model: nn.Module, rank: int, alpha: float, seed: int | None = None) -> list[str]:
    """Inject peft LoRA into every linear layer of `model` (in place); returns the adapted names.

    peft marks only the LoRA matrices trainable and freezes everything else.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = linear_layers(model)
    config = LoraConfig(r=rank, lora_alpha=alpha * rank, lora_dropout=0.0, bias="none", target_modules=targets)
    with warnings.catch_warnings():
        # peft warns while it switches fan_in_fan_out between Conv1D and Linear layers; that switch is
        # exactly what we want (checked by the LoRA math test).
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        inject_adapter_in_model(config, model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            _reference_a_init(lora_a["default"].weight, rank, generator)
    return targets


class MergedLoRAWeight(nn.Module):
    """weight -> weight + alpha * delta, delta = (A @ B)^T for nn.Linear, A @ B for Conv1D ((in, out) weights)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, transpose: bool,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_features, rank))
        _reference_a_init(self.A, rank, generator)
        self.B = nn.Parameter(torch.zeros(rank, out_features))
        self.alpha = alpha
        self.transpose = transpose

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.A @ self.B
        return weight + self.alpha * (delta.T if self.transpose else delta)


def add_merged_lora(model: nn.Module, rank: int, alpha: float, seed: int | None = None) -> list[str]:
    """The reference's `lora_alternative`: same math as `add_lora`, computed on the weight."""
    targets = linear_layers(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for param in model.parameters():
        param.requires_grad = False
    for name in targets:
        module = model.get_submodule(name)
        if isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
            transpose = False
        else:
            out_features, in_features = module.weight.shape
            transpose = True
        parametrize.register_parametrization(
            module, "weight", MergedLoRAWeight(in_features, out_features, rank, alpha, transpose, generator)
        )
    return targets


def lora_modules(model: nn.Module) -> list[nn.Module]:
    """Every module holding LoRA matrices (peft's layers or our merged-weight parametrizations)."""
    found = []
    for module in model.modules():
        if isinstance(module, MergedLoRAWeight):
            found.append(module)
        elif isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
            found.extend([module.lora_A, module.lora_B])
    return found
