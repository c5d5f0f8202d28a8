"""What a finished sft run writes beside the model: the model card of `<out>/final/` and, with `export`, what
trained in other stacks' forms (`unfreeze.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unfreeze.recipes.sft.config import SFTConfig


def card(config: SFTConfig, model: Any, summary: Any, metrics: dict) -> str:
    """final/README.md: base model, data, what trained, the command, the metrics known when saving, loading."""
    from unfreeze.export.card import command_line, model_card

    final = Path(str(config.out)) / "final"
    loading = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
               f"model = AutoModelForCausalLM.from_pretrained(\"{final}\")  # the LM; the pause head is not used\n"
               f"tokenizer = AutoTokenizer.from_pretrained(\"{final}\")\n"
               "# with the pause head: from unfreeze.models.control.tokens import ControlTokenLM\n"
               f"# pause_model = ControlTokenLM.from_pretrained(\"{final}\")")
    notes = []
    if model.control_tokens:
        notes.append(f"plain transformers runs the LM alone: the control tokens {model.control_tokens} have their "
                     "trained rows in the embedding matrix but zero rows in the LM head, and generation_config.json "
                     "suppresses them; the pause head (control_tokens.safetensors) needs ControlTokenLM")
    if model.has_lora:
        notes.append("the LoRA adapter is not merged: these weights are the base model's, the adapter is in "
                     "adapter/ (PeftModel.from_pretrained(model, final/adapter)); merge_lora: true saves it merged")
    return model_card(task="causal LM (pause-token SFT)", base_model=config.model, weights=config.weights,
                      data=str(config.data), summary=summary.lines(), command=command_line("sft", config),
                      metrics=metrics, loading=loading, notes=notes, out=config.out, pipeline_tag="text-generation")


def export(config: SFTConfig, model: Any, summary: Any, log: Any) -> dict | None:
    """With `export`: what trained, in every form that can hold it (`export.formats.write_all`)."""
    if config.export is None:
        return None
    from unfreeze.export import formats
    from unfreeze.export.plan import pause_plan

    plan = pause_plan(model, summary.components)
    plan.base_model = config.model
    record = formats.write_all(plan, Path(config.export))
    log.info(f"exported to {config.export}: {', '.join(record['written'].values()) or 'nothing'}")
    return record
