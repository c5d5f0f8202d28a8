"""sft's `final/` as plain transformers loads it: AutoModelForCausalLM + its tokenizer generate what the pause model
generates with its pause head switched off; folders of either format load as pause models; the model card; the
export of what trained (the pause token's row) for PEFT and axolotl."""

from __future__ import annotations

import json

import pytest
import torch
from pause_helpers import PAUSE, tiny_model
from test_export import axolotl_unfrozen
from test_sft import _tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from unfreeze.models.control.folder import base_state_dict
from unfreeze.models.control.tokens import ControlTokenLM
from unfreeze.models.generation import greedy_generate, step_function
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_sft

PROMPTS = ["### INPUT: Ann has 3 apples and gets 4 more. How many now?\n\n ### Answer:",
           "### INPUT: 2+2?\n\n ### Answer:"]


def ours(model: ControlTokenLM, tokenizer, prompt: str, steps: int = 12) -> list[int]:
    """The pause model's greedy tokens with its pause head switched off (pause_temperature 0: never pause)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = greedy_generate(step_function(model.eval()), [ids], eos_id=tokenizer.eos_token_id, pad_id=0,
                          max_new_tokens=steps, pause_ids=model.control_token_ids, pause_temperature=0.0)
    return out[0].tokens


def plain(model, tokenizer, prompt: str, steps: int = 12) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.eval().generate(ids, max_new_tokens=steps, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("switches", [{}, {"lora": True, "merge_lora": True, "lora_rank": 4},
                                      {"lora": True, "lora_rank": 4, "unfreeze_lm_head": True}])
def test_plain_causal_lm_generates_as_the_pause_model_without_its_head(tmp_path, pause_data, switches):
    from peft import PeftModel

    out = tmp_path / "run"
    run_sft(load_config(str(_tiny_config(tmp_path, pause_data, num_epochs=1, **switches)), out=str(out)))
    final = out / "final"
    pause_model = ControlTokenLM.from_pretrained(str(final))
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == pause_model.vocab_size
    assert torch.equal(model.get_input_embeddings().weight[-1], pause_model.control_embeddings[0])
    if pause_model.has_lora:  # unmerged: the weights are the base's, the adapter beside them
        model = PeftModel.from_pretrained(model, str(final / "adapter"))
    for prompt in PROMPTS:
        assert plain(model, tokenizer, prompt) == ours(pause_model, tokenizer, prompt)
    card = (final / "README.md").read_text()
    assert "trainable: pause_embedding, pause_head" in card and "unfreeze sft" in card and "eval_loss" in card


def test_folders_saved_before_the_plain_vocabulary_still_load(tmp_path):
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.control_embeddings.add_(0.5)
    new, old = tmp_path / "new", tmp_path / "old"
    model.save_pretrained(new)
    model.save_pretrained(old)
    model.hf_model.save_pretrained(old, state_dict=base_state_dict(model.hf_model))  # the earlier format: V rows
    for folder in (new, old):
        loaded = ControlTokenLM.from_pretrained(str(folder))
        assert loaded.base_vocab_size == model.base_vocab_size and loaded.control_tokens == [PAUSE]
        assert torch.equal(loaded.control_embeddings, model.control_embeddings)
        ids = torch.tensor([[5, 6, model.control_token_ids[0], 7]])
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logprobs, model.eval()(ids).logprobs, atol=1e-6)


def test_export_of_the_pause_rows(tmp_path, pause_data):
    from peft import PeftConfig, get_peft_model

    out, export = tmp_path / "run", tmp_path / "export"
    metrics = run_sft(load_config(str(_tiny_config(tmp_path, pause_data, num_epochs=1, export=str(export))),
                                  out=str(out)))
    record = json.loads((export / "export.json").read_text())
    assert set(record["written"]) == {"peft", "axolotl", "names"} and "llamafactory" in record["not_written"]
    assert any("pause head" in note for note in record["notes"]) and metrics["export"]["written"] == record["written"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    pause_id = model.get_input_embeddings().weight.shape[0] - 1
    names = [name for name, _ in model.named_parameters()]
    import yaml

    patterns = yaml.safe_load((export / "axolotl.yaml").read_text())["unfrozen_parameters"]
    assert axolotl_unfrozen(names, patterns) == {"transformer.wte.weight": [(pause_id, pause_id + 1)]}
    peft_model = get_peft_model(model, PeftConfig.from_pretrained(str(export)))
    trains = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    assert [n for n, _ in trains] == ["base_model.model.transformer.wte.trainable_tokens_delta.default"]
    assert peft_model.base_model.model.transformer.wte.token_indices["default"] == [pause_id]
    assert (export / "trainable_parameters.txt").read_text().split() == [
        f"transformer.wte.weight[{pause_id}:{pause_id + 1}]", "pause_head.weight", "pause_head.bias"]


def test_a_pause_head_alone_has_no_form_but_its_names(tmp_path):
    from unfreeze.export import formats
    from unfreeze.export.plan import pause_plan
    from unfreeze.models.trainable import apply_components

    model = tiny_model()
    apply_components(model, ["pause_head"])
    record = formats.write_all(pause_plan(model, ["pause_head"]), tmp_path)
    assert set(record["written"]) == {"names"} and "pause head" in record["not_written"]["peft"]
    assert (tmp_path / "trainable_parameters.txt").read_text().split() == ["pause_head.weight", "pause_head.bias"]
