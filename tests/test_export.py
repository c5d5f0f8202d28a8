"""`unfreeze export` and `Selected.export`: each stack, applying the written config by its own rule, trains what
unfreeze selects.

* PEFT: the config goes through real `peft.get_peft_model` on a second copy of the model.
* axolotl: its matching rule for `unfrozen_parameters` (`src/axolotl/utils/freeze.py`, `freeze_layers_except` and
  `LayerNamePattern`, axolotl-ai-cloud/axolotl at commit 107c67ae5a236ab458454e8daf3b77a98ce56867) is written
  again below from its description and applied to the model's parameter names.
* LLaMA-Factory: its freeze rule (`src/llamafactory/model/adapter.py`, `_setup_freeze_tuning`, hiyouga/LlamaFactory
  at commit 895ea4f5e399c64ad14d11cda7fdf255a7a9a222) likewise, independently of `unfreeze.export.llamafactory`.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from test_select import ARCHS, make_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import unfreeze
from unfreeze.cli import main
from unfreeze.errors import UsageError

RANK, ALPHA = 2, 4
HEADS = {"causal_lm": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification}


def twin_models(arch: str, head: str):
    torch.manual_seed(0)
    first = HEADS[head].from_config(make_config(arch))
    torch.manual_seed(0)
    return first, HEADS[head].from_config(make_config(arch))


# --- PEFT ----------------------------------------------------------------------------------------------


def peft_view(model) -> tuple[set[str], set[str]]:
    """(layers with a LoRA update, tensors that train in full) of a model, in the plain model's names: peft's
    wrapper prefix `base_model.model.` and its `modules_to_save.default` / `base_layer` levels removed."""
    adapted, full = set(), set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        plain = plain.replace(".base_layer", "")
        if ".lora_A." in plain or ".lora_B." in plain:
            adapted.add(plain.split(".lora_")[0])
        else:
            full.add(plain)
    return adapted, full


@pytest.mark.parametrize("arch", ("gpt2", "llama", "qwen2"))
@pytest.mark.parametrize("head", HEADS)
def test_peft_config_applied_by_peft_trains_unfreezes_lora_choice(arch, head):
    """Compared: the layers with a LoRA update and the tensors that train in full. Both are equal, except that
    unfreeze's `lora` also gives the output layer (which trains in full on both sides) an update of its own, the
    reference's; PEFT's form leaves that update out -- the only difference, counted exactly."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from unfreeze.export.peft import peft_config

    ours, theirs = twin_models(arch, head)
    chosen = unfreeze.select(ours, "lora", lora_rank=RANK, lora_alpha=ALPHA).apply()
    peft_model = get_peft_model(theirs, peft_config(chosen.plan()))
    our_adapted, our_full = peft_view(ours)
    their_adapted, their_full = peft_view(peft_model)
    output = "lm_head" if head == "causal_lm" else "score"
    assert our_full == their_full == {f"{output}.weight"}
    assert their_adapted == our_adapted - {output} and output in our_adapted
    head_update = sum(p.numel() for n, p in ours.named_parameters() if n.startswith(f"{output}.lora_"))
    assert chosen.trainable_params - head_update == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(layer.scaling["default"] == ALPHA for layer in layers)  # the reference's: alpha, not alpha/r


def test_peft_writes_adapter_config_json_that_peft_reads(tmp_path):
    from peft import PeftConfig

    config = make_config("llama")
    folder = tmp_path / "llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    out = tmp_path / "adapter" / "adapter_config.json"
    assert main(["export", "lora", "--model", str(folder), "--to", "peft", "--lora_rank", "2", "--out", str(out)]) == 0
    loaded = PeftConfig.from_pretrained(str(out.parent))
    assert loaded.r == 2 and loaded.lora_alpha == 16 and loaded.modules_to_save == ["lm_head"]
    assert set(loaded.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_peft_refuses_choices_without_an_adapter():
    model = AutoModelForCausalLM.from_config(make_config("llama"))
    with pytest.raises(UsageError, match="no adapter"):
        unfreeze.select(model, "last_block").export("peft")


# --- axolotl -------------------------------------------------------------------------------------------


def axolotl_unfrozen(names: list[str], patterns: list[str]) -> dict[str, list[tuple[int, int | None]] | None]:
    """axolotl's rule, written again: a pattern may end in `[start:end]` (or `[index]`), a row range not compiled
    into the regex; in the rest every period not followed by `+` is literal; a name is unfrozen when a pattern
    matches it from its start (re.match). Returns unfrozen name -> its row ranges (None: every row)."""
    unfrozen: dict[str, list] = {}
    for pattern in patterns:
        ranged = re.match(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", pattern)
        base, rows = pattern, None
        if ranged:
            base, start, end = ranged.groups()
            rows = (int(start), int(start) + 1) if end is None and start.isdecimal() else (
                int(start or 0), int(end) if end else None)
        regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", base))
        for name in names:
            if regex.match(name):
                unfrozen.setdefault(name, [])
                if rows is not None:
                    unfrozen[name].append(rows)
    return {name: ranges or None for name, ranges in unfrozen.items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ("last_layer", "last_block", "blocks:1-1", "bias", "norms", "all"))
def test_axolotl_patterns_unfreeze_exactly_the_selection(arch, preset):
    model = AutoModelForCausalLM.from_config(make_config(arch))
    if (arch, preset) == ("llama", "bias"):  # Llama has no bias terms: only the LM head would train, refused
        with pytest.raises(UsageError, match="has no bias terms, so only the output layer would train"):
            unfreeze.select(model, preset)
        return
    chosen = unfreeze.select(model, preset)
    patterns = yaml.safe_load(chosen.export("axolotl"))["unfrozen_parameters"]
    names = [name for name, _ in model.named_parameters()]
    unfrozen = axolotl_unfrozen(names, patterns)
    assert set(unfrozen) == set(chosen.names) and all(rows is None for rows in unfrozen.values())


def test_axolotl_block_patterns_stop_at_the_index():
    """`^model.layers.1.`: the last period is literal, so block 1 of 12 never unfreezes blocks 10 and 11."""
    config = make_config("llama")
    config.num_hidden_layers = 12
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    chosen = unfreeze.select(model, "blocks:1-1")
    patterns = yaml.safe_load(chosen.export("axolotl"))["unfrozen_parameters"]
    unfrozen = axolotl_unfrozen([name for name, _ in model.named_parameters()], patterns)
    assert set(unfrozen) == set(chosen.names) and not any(".layers.1" + d in n for n in unfrozen for d in "01")


def test_axolotl_lora_keys():
    model = AutoModelForCausalLM.from_config(make_config("gpt2"))
    keys = yaml.safe_load(unfreeze.select(model, "lora", lora_rank=RANK, lora_alpha=ALPHA).export("axolotl"))
    assert keys == {"adapter": "lora", "lora_r": RANK, "lora_alpha": ALPHA * RANK, "lora_dropout": 0.0,
                    "lora_target_modules": ["c_attn", "c_proj", "c_fc"], "lora_fan_in_fan_out": True,
                    "lora_modules_to_save": ["lm_head"]}


# --- LLaMA-Factory -------------------------------------------------------------------------------------


def llamafactory_trainable(names: list[str], num_layers: int, args: dict) -> set[str]:
    """LLaMA-Factory's freeze rule, written again: the last n layers (n > 0) or the first -n; each trainable module
    name becomes the substring `.{index}.{module}` (`all`: `.{index}.`); extra modules are plain substrings."""
    n = args["freeze_trainable_layers"]
    layer_ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    modules = [m.strip() for m in str(args["freeze_trainable_modules"]).split(",")]
    wanted = [f".{i}.{'' if m == 'all' else m}" for m in modules for i in layer_ids]
    wanted += [m.strip() for m in str(args.get("freeze_extra_modules") or "").split(",") if m.strip()]
    return {name for name in names if any(piece in name for piece in wanted)}


@pytest.mark.parametrize("arch,preset", [("gpt2", "last_block"), ("gpt2", "last_two_blocks"),
                                         ("gpt_neox", "last_block"), ("llama", "blocks:0-1"), ("llama", "last_layer"), ("llama", "norms"),
                                         ("qwen2", "last_layer")])
def test_llamafactory_arguments_train_exactly_the_selection(arch, preset):
    model = AutoModelForCausalLM.from_config(make_config(arch))
    chosen = unfreeze.select(model, preset)
    args = yaml.safe_load(chosen.export("llamafactory"))
    assert args["finetuning_type"] == "freeze"
    names = [name for name, _ in model.named_parameters()]
    assert llamafactory_trainable(names, make_config(arch).num_hidden_layers, args) == set(chosen.names)


@pytest.mark.parametrize("arch,preset,why", [
    ("llama", "blocks:1-1", "only the first or the last blocks"),
    ("llama", "last_block", "would also train model.layers.0.input_layernorm.weight"),  # `norm` is a substring
    ("gpt2", "bias", "would also train"),
])
def test_llamafactory_refuses_what_its_rule_cannot_say(arch, preset, why):
    model = AutoModelForCausalLM.from_config(make_config(arch))
    with pytest.raises(UsageError, match=re.escape(why)):
        unfreeze.select(model, preset).export("llamafactory")


def test_cli_middle_blocks_for_llamafactory_is_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "lf.yaml"
    code = main(["export", "blocks:1-1", "--model", "gpt2", "--weights", "random", "--model_config",
                 '{"n_layer":3,"n_embd":32,"n_head":2}', "--to", "llamafactory", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert len(err) == 1 and "blocks 1-1 of 0-2" in err[0] and "first or the last blocks" in err[0]


# --- names ---------------------------------------------------------------------------------------------


def test_names_are_the_selection_one_per_line(tmp_path):
    out = tmp_path / "names.txt"
    assert main(["export", "last_blocks:2", "--model", "gpt2", "--weights", "random", "--model_config",
                 '{"n_layer":3,"n_embd":32,"n_head":2}', "--head", "classifier", "--num_labels", "3",
                 "--to", "names", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[-1] == "score.weight" and "transformer.ln_f.bias" in lines
    assert {n.split(".")[2] for n in lines if n.startswith("transformer.h.")} == {"1", "2"}
    assert json.loads(json.dumps(lines)) == lines
