"""What every writer needs: the plan's module names, compacted where another stack's matching rule allows."""

from __future__ import annotations

from unfreeze.errors import UsageError
from unfreeze.export.plan import TrainPlan


def module_names(plan: TrainPlan) -> set[str]:
    """Every module of the plain model that holds parameters (every proper prefix of a tensor name)."""
    found = set()
    for name in plan.plain_names:
        pieces = name.split(".")
        found.update(".".join(pieces[:depth]) for depth in range(1, len(pieces)))
    return found


def suffix_matches(target: str, modules: set[str]) -> set[str]:
    """The modules peft's (and axolotl's, LLaMA-Factory's) target lists pick for `target`: the module named
    exactly so, or any module whose name ends in "." + target (peft `check_target_module_exists`)."""
    return {m for m in modules if m == target or m.endswith("." + target)}


def leaf_names(targets: list[str], plan: TrainPlan) -> list[str]:
    """`targets` as their last name part (q_proj, c_attn, ...) when those pick exactly `targets`; else in full."""
    modules = module_names(plan)
    leaves = list(dict.fromkeys(t.rsplit(".", 1)[-1] for t in targets))
    picked = set().union(*(suffix_matches(leaf, modules) for leaf in leaves)) if leaves else set()
    return leaves if picked == set(targets) else list(targets)


def lora_target_keys(plan: TrainPlan) -> dict:
    """How PEFT's `LoraConfig` names the adapted layers: by their last names where those pick exactly them; else
    by those names restricted to blocks (`layers_to_transform`, `layers_pattern`: LoRA on a block set), where
    peft's own matching rule (`check_target_module_exists`) picks exactly them; else by their full names."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = lora_targets(plan)
    leaves = leaf_names(targets, plan)
    if leaves != list(targets) or not targets or plan.blocks is None:
        return {"target_modules": leaves}
    inside = [t for t in targets if t.startswith(plan.blocks + ".")]
    indices = sorted({int(t[len(plan.blocks) + 1:].split(".", 1)[0]) for t in inside})
    short = list(dict.fromkeys(t.rsplit(".", 1)[-1] for t in targets))
    keys = {"target_modules": short, "layers_to_transform": indices, "layers_pattern": plan.blocks.rsplit(".", 1)[-1]}
    rule = LoraConfig(**keys)
    if len(inside) == len(targets) and {m for m in module_names(plan) if check_target_module_exists(rule, m)} == set(
            targets):
        return keys
    return {"target_modules": list(targets)}


def lora_settings(plan: TrainPlan, to: str) -> tuple[int, float] | None:
    """(rank, scale) shared by every adapted layer, or None without LoRA; a UsageError for layouts no stack holds."""
    if not plan.lora:
        return None
    fused = [layer for layer, adapted in plan.lora.items() if adapted.updates > 1]
    if fused:
        raise UsageError(f"--to {to}: {plan.choice} gives {fused[0]} {plan.lora[fused[0]].updates} LoRA updates "
                         "(the reference layout on a fused projection); PEFT's LoRA has one per layer; use "
                         "--lora_layout peft")
    kinds = {(a.rank, a.scale) for a in plan.lora.values()}
    if len(kinds) > 1:
        raise UsageError(f"--to {to}: the LoRA layers of {plan.choice} differ in rank or scale ({sorted(kinds)})")
    return next(iter(kinds))


def lora_targets(plan: TrainPlan) -> list[str]:
    """The adapted layers that do not also train in full: a fully trained layer needs no low-rank update (the
    reference's LoRA adapts its new head too, and trains the head itself; other stacks train the head only)."""
    inside = tuple(plan.modules)
    return [layer for layer in plan.lora if not any(layer == m or layer.startswith(m + ".") for m in inside)]


def dropped_lora_note(plan: TrainPlan) -> list[str]:
    dropped = [layer for layer in plan.lora if layer not in lora_targets(plan)]
    return [f"note: {', '.join(dropped)} train in full, so their LoRA update (which adds nothing a full update "
            "cannot do) is left out"] if dropped else []
