"""`--to peft`: the choice as PEFT's own config (the adapter_config.json form `PeftConfig.save_pretrained` writes).

PEFT trains adapters, and whole modules beside them (`modules_to_save`, copies that train and are saved with
the adapter; peft refuses a config whose only targets are such modules), and rows of an embedding matrix
(`trainable_token_indices`, or `TrainableTokensConfig` alone). So:

* LoRA choices: `LoraConfig(r, lora_alpha = scale * r, target_modules)` -- peft scales by lora_alpha / r, the
  reference by alpha, hence lora_alpha = alpha * r as in `models/lora.py` -- with the modules that train in
  full as `modules_to_save` (the output layer; its own LoRA update is left out, see `common.lora_targets`);
  LoRA on a block set (`lora:last_blocks:8`) as `layers_to_transform` with `layers_pattern` (`common.lora_target_keys`);
* new-token rows: `trainable_token_indices` beside LoRA, `TrainableTokensConfig` alone;
* every other choice trains whole modules or single tensors and no adapter, which PEFT cannot express:
  a UsageError says so (axolotl, LLaMA-Factory and names can).

Tied weights: peft copies a `modules_to_save` module, so a tied LM head and input embedding train as two
copies where unfreeze trains the one shared matrix (said in the notes).
"""

from __future__ import annotations

import enum
import json

from unfreeze.errors import UsageError
from unfreeze.export.common import dropped_lora_note, lora_settings, lora_target_keys, lora_targets
from unfreeze.export.plan import TrainPlan


def peft_config(plan: TrainPlan):
    """A `peft.LoraConfig` (or `TrainableTokensConfig`) that trains what `plan` trains; UsageError if none can."""
    from peft import LoraConfig, TrainableTokensConfig

    settings = lora_settings(plan, "peft")
    if plan.tensors:
        raise UsageError(f"--to peft: {plan.choice} trains single tensors apart from their modules ({plan.tensors[0]}, "
                         "...); PEFT trains adapters and whole modules; use --to axolotl or --to names")
    targets = lora_targets(plan)
    task = "SEQ_CLS" if plan.task == "seq_cls" else "CAUSAL_LM"
    if not targets:
        if plan.token_rows and not plan.modules:
            (layer, rows), = plan.token_rows.items()
            return TrainableTokensConfig(target_modules=[layer], token_indices=rows,
                                         base_model_name_or_path=plan.base_model)
        raise UsageError(f"--to peft: {plan.choice} trains whole modules and no adapter; PEFT keeps whole modules "
                         "(modules_to_save) only beside a LoRA adapter, so it cannot hold this choice; use --to "
                         "axolotl, --to llamafactory or --to names")
    rank, scale = settings
    alpha = scale * rank
    return LoraConfig(r=rank, lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
                      lora_dropout=plan.lora_dropout, bias="none", **lora_target_keys(plan),
                      modules_to_save=list(plan.modules) or None, trainable_token_indices=plan.token_rows or None,
                      fan_in_fan_out=bool(set(targets) & set(plan.transposed)), task_type=task,
                      base_model_name_or_path=plan.base_model)


def notes(plan: TrainPlan) -> list[str]:
    said = dropped_lora_note(plan)
    if plan.shared:
        said.append("note: peft trains each modules_to_save module as its own copy, so tied input and output "
                    "embeddings train as two matrices")
    return said


def _plain(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def render(plan: TrainPlan) -> str:
    config = peft_config(plan)
    return json.dumps({k: _plain(v) for k, v in config.to_dict().items()}, indent=2, sort_keys=True) + "\n"
