"""Every option of `unfreeze export` (kept apart from the recipe so the CLI lists them without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unfreeze.config import option
from unfreeze.recipes.classify.config import TrainableLayers


@dataclass
class ExportConfig:
    """Write a choice of what trains in another stack's own form: PEFT's adapter_config.json, axolotl's
    unfrozen_parameters, LLaMA-Factory's freeze arguments, or the plain list of parameter names. The model is
    built on the meta device: no weights are read or downloaded, only its config."""

    choice: TrainableLayers | None = None
    """what trains, in classify's and sft's words (docs/trainable.md): last_layer, last_block, last_two_blocks,
    last_blocks:N, blocks:SET, all, lora, lora_alternative, bias, norms, and the parts attention:BLOCKS,
    mlp:BLOCKS, lora:BLOCKS, embeddings; joined with + (e.g. lora:last_blocks:8+last_layer)"""
    model: str | None = option(None, path=True)
    """the model: a hub id, a local folder, a .gguf file, or a GPT-2 size name"""
    to: Literal["peft", "axolotl", "llamafactory", "names"] = "names"
    """the form: peft (adapter_config.json), axolotl (YAML: unfrozen_parameters or LoRA keys), llamafactory
    (YAML: finetuning_type freeze / full / lora arguments), names (one parameter name per line)"""
    out: str | None = option(None, path=True)
    """file to write (default: print it)"""
    head: Literal["causal_lm", "classifier"] = "causal_lm"
    """which model the names belong to: causal_lm (AutoModelForCausalLM: last_layer is the LM head) or
    classifier (AutoModelForSequenceClassification: last_layer is its score head)"""
    num_labels: int = 2
    """classes of --head classifier"""
    weights: Literal["pretrained", "random"] = "pretrained"
    """random: only the architecture of --model matters (with --model_config overrides)"""
    model_config: str | None = None
    """JSON architecture overrides (with --weights random), e.g. '{"n_layer":2,"n_embd":128,"n_head":4}'"""
    lora_rank: int = 8
    """LoRA rank (the lora choices)"""
    lora_alpha: int = 8
    """LoRA alpha, scaling the update by alpha as classify does (written as lora_alpha = alpha * rank for peft)"""
    lora_layout: Literal["reference", "peft"] = "peft"
    """peft: one update per layer (what the other stacks hold); reference gives GPT-2's fused c_attn three"""
