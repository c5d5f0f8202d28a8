"""`--to axolotl`: a YAML snippet for axolotl's config.

Without LoRA the choice is `unfrozen_parameters`, a list of regex patterns over parameter names. axolotl's rule
(`src/axolotl/utils/freeze.py`: `freeze_layers_except` and `LayerNamePattern`; axolotl-ai-cloud/axolotl at commit
107c67ae5a236ab458454e8daf3b77a98ce56867): a parameter trains when a pattern matches its name from the start
(`re.match`); every period not followed by `+` is a literal period; an optional `[start:end]` suffix unfreezes
only those rows (a gradient hook zeroes the others). So a module that trains in full is `^<module>.` (its last
period literal: `layers.3.` never matches `layers.30.`), a single tensor `^<name>$`, and a new token's rows
`^<embedding weight>$[V:V+n]` (left out when the whole matrix trains: a range would then restrict it).

With LoRA the choice is axolotl's adapter keys (`adapter: lora`, `lora_r`, `lora_alpha`, `lora_dropout`,
`lora_target_modules`, `peft_layers_to_transform` and `peft_layers_pattern` for LoRA on a block set,
`lora_modules_to_save`, `peft_trainable_token_indices`), which axolotl hands to peft: the mapping of `--to peft`.
"""

from __future__ import annotations

import yaml

from unfreeze.errors import UsageError
from unfreeze.export.common import dropped_lora_note, lora_settings, lora_target_keys, lora_targets
from unfreeze.export.plan import TrainPlan


def row_ranges(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted rows as [start, end) runs."""
    runs: list[tuple[int, int]] = []
    for row in sorted(set(rows)):
        if runs and runs[-1][1] == row:
            runs[-1] = (runs[-1][0], row + 1)
        else:
            runs.append((row, row + 1))
    return runs


def unfrozen_parameters(plan: TrainPlan) -> list[str]:
    """axolotl patterns that unfreeze exactly the plan's tensors (and rows)."""
    present = set(plan.plain_names)
    patterns = [f"^{module}." for module in plan.modules if any(n.startswith(module + ".") for n in present)]
    patterns += [f"^{name}$" for name in plan.tensors]
    for module, rows in plan.token_rows.items():
        weight = next(n for n in plan.plain_names if n.startswith(module + "."))
        if not any(weight.startswith(m + ".") for m in plan.modules):
            patterns += [f"^{weight}$[{start}:{end}]" for start, end in row_ranges(rows)]
    return patterns


def settings(plan: TrainPlan) -> dict:
    lora = lora_settings(plan, "axolotl")
    if lora is None:
        return {"unfrozen_parameters": unfrozen_parameters(plan)}
    if plan.tensors:
        raise UsageError(f"--to axolotl: {plan.choice} trains LoRA and single tensors ({plan.tensors[0]}); axolotl's "
                         "LoRA keeps only whole modules (lora_modules_to_save); use --to names")
    rank, scale = lora
    alpha = scale * rank
    targets = lora_target_keys(plan)
    keys = {"adapter": "lora", "lora_r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "lora_dropout": plan.lora_dropout, "lora_target_modules": targets["target_modules"]}
    if "layers_to_transform" in targets:  # LoRA on a block set: axolotl hands these keys to peft's LoraConfig
        keys["peft_layers_to_transform"] = targets["layers_to_transform"]
        keys["peft_layers_pattern"] = [targets["layers_pattern"]]
    if set(lora_targets(plan)) & set(plan.transposed):
        keys["lora_fan_in_fan_out"] = True
    if plan.modules:
        keys["lora_modules_to_save"] = list(plan.modules)
    if plan.token_rows:
        keys["peft_trainable_token_indices"] = {m: list(rows) for m, rows in plan.token_rows.items()}
    return keys


def notes(plan: TrainPlan) -> list[str]:
    return dropped_lora_note(plan)


def render(plan: TrainPlan) -> str:
    head = (f"# unfreeze export: {plan.choice} on {plan.base_model or plan.model_type} ({plan.task}); axolotl matches "
            "unfrozen_parameters from the start of each parameter name, periods literal\n")
    return head + yaml.safe_dump(settings(plan), sort_keys=False, default_flow_style=False, width=1000)
