"""`--to llamafactory`: LLaMA-Factory's freeze-tuning arguments, where its rule can say the choice exactly.

LLaMA-Factory's rule (`src/llamafactory/model/adapter.py`, `_setup_freeze_tuning`; hiyouga/LlamaFactory at commit
895ea4f5e399c64ad14d11cda7fdf255a7a9a222; the arguments in `hparams/finetuning_args.py`, `FreezeArguments`):

* `freeze_trainable_layers: n` picks the blocks: the last n when n > 0, the first -n when n < 0 (0: none);
* `freeze_trainable_modules` (comma-separated) names modules inside those blocks by their first name part after
  the block index (`self_attn`, `mlp`, ...), or `all`; each becomes the substring `.<index>.<module>`;
* `freeze_extra_modules` (comma-separated) names modules outside the blocks by the second-to-last part of a
  parameter name (`norm`, `lm_head`, `ln_f`, ...); each is used as a plain substring;
* a parameter trains when any of those substrings occurs in its name (text-only models forbid nothing).

So only a first or last run of blocks can be named, and the substrings can catch more than meant: Llama's final
norm is `norm`, which also occurs in every block's `input_layernorm`. `render` therefore derives the arguments,
applies LLaMA-Factory's rule to the model's parameter names (`llamafactory_trains`) and writes them only when
that gives exactly the plan's tensors; otherwise a UsageError names what the rule would get wrong.
"""

from __future__ import annotations

import yaml

from unfreeze.errors import UsageError
from unfreeze.export.common import leaf_names, lora_settings, lora_targets
from unfreeze.export.plan import TrainPlan


def llamafactory_trains(names: list[str], num_layers: int, layers: int, modules: list[str],
                        extra: list[str]) -> set[str]:
    """The parameter names LLaMA-Factory's freeze rule trains (see the module docstring)."""
    ids = range(max(0, num_layers - layers), num_layers) if layers > 0 else range(min(-layers, num_layers))
    substrings = [f".{i}.{'' if module == 'all' else module}" for module in modules for i in ids] + list(extra)
    return {name for name in names if any(part in name for part in substrings)}


def _block_index(name: str, blocks: str) -> int | None:
    if not name.startswith(blocks + "."):
        return None
    return int(name[len(blocks) + 1:].split(".", 1)[0])


def freeze_arguments(plan: TrainPlan) -> dict:
    """The freeze arguments of `plan` (checked against LLaMA-Factory's rule); UsageError where none can say it."""
    why = f"--to llamafactory: {plan.choice} cannot be written as LLaMA-Factory freeze arguments"
    if plan.token_rows:
        raise UsageError(f"{why}: it trains single rows of an embedding, which LLaMA-Factory's freeze tuning cannot")
    if plan.blocks is None:
        raise UsageError(f"{why}: the model's blocks could not be read")
    chosen = set(plan.trained)
    indices = sorted({i for n in chosen if (i := _block_index(n, plan.blocks)) is not None})
    count = plan.num_blocks
    contiguous = indices == list(range(indices[0], indices[-1] + 1)) if indices else True
    if not contiguous or (indices and indices[0] > 0 and indices[-1] < count - 1):
        named = f"{indices[0]}-{indices[-1]}" if contiguous else ",".join(map(str, indices))
        raise UsageError(f"{why}: it trains blocks {named} of 0-{count - 1}; "
                         "freeze_trainable_layers names only the first or the last blocks")
    layers = 0 if not indices else (len(indices) if indices[-1] == count - 1 else -len(indices))
    in_blocks = [n for n in plan.plain_names if _block_index(n, plan.blocks) in indices]
    parts = list(dict.fromkeys(n[len(plan.blocks) + 1:].split(".")[1] for n in in_blocks if n in chosen))
    modules = ["all"] if all(n in chosen for n in in_blocks) else parts
    extra = list(dict.fromkeys(n.split(".")[-2] for n in plan.trained if _block_index(n, plan.blocks) is None))
    got = llamafactory_trains(plan.plain_names, count, layers, modules, extra)
    if got != chosen:
        wrong = sorted(got - chosen)
        missing = sorted(chosen - got)
        said = f"would also train {wrong[0]}" if wrong else f"would not train {missing[0]}"
        raise UsageError(f"{why}: with freeze_trainable_layers {layers}, freeze_trainable_modules "
                         f"{','.join(modules)} and freeze_extra_modules {','.join(extra) or '(none)'}, its substring "
                         f"rule {said}")
    arguments = {"finetuning_type": "freeze", "freeze_trainable_layers": layers,
                 "freeze_trainable_modules": ",".join(modules)}
    return {**arguments, "freeze_extra_modules": ",".join(extra)} if extra else arguments


def lora_arguments(plan: TrainPlan) -> dict:
    rank, scale = lora_settings(plan, "llamafactory")
    alpha = scale * rank
    keys = {"finetuning_type": "lora", "lora_rank": rank,
            "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha, "lora_dropout": plan.lora_dropout, "lora_target": ",".join(leaf_names(lora_targets(plan), plan))}
    if plan.modules:  # handed to peft's modules_to_save, which matches name endings: full names are exact
        keys["additional_target"] = ",".join(plan.modules)
    return keys


def arguments(plan: TrainPlan) -> dict:
    if plan.task != "causal_lm":
        raise UsageError("--to llamafactory: LLaMA-Factory trains causal LMs; it has no sequence-classification "
                         "head to name (use --head causal_lm, or --to peft / axolotl / names)")
    if plan.lora:
        if plan.tensors or plan.token_rows:
            raise UsageError(f"--to llamafactory: {plan.choice} trains LoRA and single tensors or rows, which "
                             "LLaMA-Factory's LoRA arguments cannot hold")
        return lora_arguments(plan)
    if set(plan.trained) == set(plan.plain_names):
        return {"finetuning_type": "full"}
    return freeze_arguments(plan)


def render(plan: TrainPlan) -> str:
    head = (f"### unfreeze export: {plan.choice} on {plan.base_model or plan.model_type} "
            "(LLaMA-Factory training arguments)\n")
    return head + yaml.safe_dump(arguments(plan), sort_keys=False, default_flow_style=False, width=1000)

