"""The one vocabulary of what trains, in classify and in sft, on tiny GPT-2, Llama, Qwen2 and GPT-NeoX models.

Every new word selects its closed-form parameter count (a formula of the config, never read back from the
model), three AdamW steps change exactly the chosen tensors (for `new_tokens`: only the new rows), and a bad
choice is one line, exit 2, before anything is written.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MambaConfig, Qwen2Config

from pause_helpers import PAUSE, save_tiny_tokenizer, tiny_tokenizer
from test_architectures import (ARCHS, C, D, FF, HD, KV, L, RANK, block_params, final_norm_params, make_model,
                                padded_batch)
from unfreeze.cli import main
from unfreeze.errors import UsageError
from unfreeze.models import trainable
from unfreeze.models.choice import parse_choice
from unfreeze.models.control.tokens import ControlTokenLM

# --- closed forms per block ----------------------------------------------------------------------------


def attention_params(arch: str) -> int:
    kv = KV * HD
    if arch in ("gpt2", "gpt_neox"):  # fused q,k,v (with biases) and the output projection (with bias)
        return 4 * D * D + 4 * D
    return 2 * D * D + 2 * D * kv + (D + 2 * kv if arch == "qwen2" else 0)  # q, k, v, o; Qwen2's q,k,v biases


def mlp_params(arch: str) -> int:
    if arch == "gpt2":  # c_fc (D -> 4D) and c_proj (4D -> D), with biases
        return 8 * D * D + 5 * D
    if arch == "gpt_neox":  # dense_h_to_4h (D -> FF) and dense_4h_to_h (FF -> D), with biases
        return 2 * D * FF + FF + D
    return 3 * D * FF  # gate, up, down


def test_a_block_is_its_attention_its_mlp_and_its_norms():
    for arch in ARCHS:
        assert block_params(arch)["all"] == attention_params(arch) + mlp_params(arch) + block_params(arch)["norms"]


# --- classify ------------------------------------------------------------------------------------------


def classify_count(arch: str, choice: str) -> int:
    """What classify trains for `choice`: the words' parameters, and the new head under every choice."""
    block, head, norm = block_params(arch), D * C + C, final_norm_params(arch)
    embeddings = 50257 * D if arch == "gpt2" else 97 * D
    return head + {
        "blocks:0,2": 2 * block["all"] + norm,  # block 2 is the last: the final norm trains with it
        "blocks:0-1": 2 * block["all"],
        "attention:last_blocks:2": 2 * attention_params(arch),
        "mlp:blocks:0-1": 2 * mlp_params(arch),
        "attention:blocks:1+mlp:blocks:1": attention_params(arch) + mlp_params(arch),  # block 1 without its norms
        "mlp:all+norms": L * (mlp_params(arch) + block["norms"]) + norm,
        "embeddings": embeddings,
        "lora:last_block": block["lora"],  # the adapters of the last block only; the head in full, no update
        "lora:blocks:0,2+last_layer": 2 * block["lora"],
    }[choice]


CLASSIFY_CHOICES = ("blocks:0,2", "blocks:0-1", "attention:last_blocks:2", "mlp:blocks:0-1",
                    "attention:blocks:1+mlp:blocks:1", "mlp:all+norms", "embeddings", "lora:last_block",
                    "lora:blocks:0,2+last_layer")


def _steps_change_exactly_what_trains(model, loss_of, steps: int = 3) -> None:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        loss_of(model).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("choice", CLASSIFY_CHOICES)
def test_classify_trains_exactly_the_closed_form_of_every_new_word(arch, choice):
    model = make_model(arch)
    summary = trainable.apply_preset(model, choice, lora_rank=RANK, lora_alpha=4, seed=0)
    assert summary.trainable_params == classify_count(arch, choice), summary.tensors
    assert summary.components == [term.text for term in parse_choice(choice)]
    ids, labels = padded_batch(arch), torch.tensor([0, 1, 2])
    _steps_change_exactly_what_trains(model, lambda m: torch.nn.functional.cross_entropy(m(ids), labels))


def test_classify_refuses_sft_words():
    with pytest.raises(UsageError, match="only sft adds tokens"):
        trainable.apply_preset(make_model("llama"), "new_tokens")


# --- sft -----------------------------------------------------------------------------------------------

SFT_V = 257  # the tiny byte tokenizer's vocabulary (pause_helpers)


def causal_config(arch: str):
    common = dict(vocab_size=SFT_V, hidden_size=D, num_hidden_layers=L, num_attention_heads=4, intermediate_size=FF,
                  max_position_embeddings=64)
    config = {
        "gpt2": lambda: GPT2Config(vocab_size=SFT_V, n_embd=D, n_layer=L, n_head=4, n_positions=64),  # tied
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=KV),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=KV),
        "gpt_neox": lambda: GPTNeoXConfig(**common),
    }[arch]()
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    return config


LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                "gpt_neox": ["query_key_value"]}


def pause_model(arch: str, lora_blocks=None) -> ControlTokenLM:
    torch.manual_seed(0)
    model = ControlTokenLM.from_base(AutoModelForCausalLM.from_config(causal_config(arch)), tiny_tokenizer(), [PAUSE])
    if lora_blocks is not None:
        model.add_lora(r=RANK, alpha=4, dropout=0.0, target_modules=LORA_TARGETS[arch], layers=lora_blocks)
    return model


def sft_lora_params(arch: str) -> int:
    """peft's update on the default targets of one block: rank x (in + out) per adapted layer."""
    kv = KV * HD
    return RANK * {"gpt2": D + 3 * D, "llama": 2 * D + D + kv, "qwen2": 2 * D + D + kv, "gpt_neox": D + 3 * D}[arch]


def sft_count(arch: str, choice: str) -> int:
    block, norm, lm_head = block_params(arch), final_norm_params(arch), SFT_V * D  # no LM head has a bias here
    return {
        "new_tokens": D,  # the pause row alone
        "embeddings": SFT_V * D + D,  # the base rows and the pause row
        "pause_head": D * 2 + 2,  # hidden -> pause, 'use the LM head'
        "attention:last_block": attention_params(arch),
        "mlp:blocks:0+new_tokens": mlp_params(arch) + D,
        "blocks:0,2": 2 * block["all"] + norm + lm_head,  # a preset: the LM head trains too
        "last_layer": lm_head,
        "lora:last_block": sft_lora_params(arch),  # the adapter on the last block only
        "lora:last_block+new_tokens": sft_lora_params(arch) + D,
    }[choice]


SFT_CHOICES = ("new_tokens", "embeddings", "pause_head", "attention:last_block", "mlp:blocks:0+new_tokens",
               "blocks:0,2", "last_layer", "lora:last_block", "lora:last_block+new_tokens")


def sft_batch():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, SFT_V, (3, 9), generator=generator)
    ids[:, 2] = SFT_V  # a pause in every row
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    labels[2, 6:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("choice", SFT_CHOICES)
def test_sft_trains_exactly_the_closed_form_of_every_new_word(arch, choice):
    model = pause_model(arch, lora_blocks=[L - 1] if "lora" in choice else None)
    base_rows = model.hf_model.get_input_embeddings().weight.detach().clone()
    summary = trainable.apply_components(model, [], choice)
    assert summary.trainable_params == sft_count(arch, choice), summary.tensors
    ids, mask, labels = sft_batch()
    _steps_change_exactly_what_trains(model, lambda m: m(ids, attention_mask=mask, labels=labels,
                                                         return_logprobs=False).loss)
    if "new_tokens" in choice or choice == "pause_head":  # only the new rows: the base rows are bit for bit the same
        assert torch.equal(model.hf_model.get_input_embeddings().weight, base_rows)
    if "lora" in choice:  # the adapter sits on the last block only
        assert all(f".{L - 1}." in name for name in summary.tensors if "lora_" in name)


def test_new_tokens_train_only_the_added_rows_of_the_saved_model(tmp_path):
    model = pause_model("llama")
    trainable.apply_components(model, [], "new_tokens")
    base = model.hf_model.get_input_embeddings().weight.detach().clone()
    ids, mask, labels = sft_batch()
    _steps_change_exactly_what_trains(model, lambda m: m(ids, attention_mask=mask, labels=labels).loss)
    model.save_pretrained(tmp_path / "final")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "final").get_input_embeddings().weight
    assert saved.shape[0] == SFT_V + 1 and torch.equal(saved[:SFT_V], base)  # V + the pause row
    assert torch.equal(saved[SFT_V:], model.control_embeddings.detach()) and saved[SFT_V:].abs().sum() > 0


def test_switches_and_words_join():
    model = pause_model("qwen2")
    summary = trainable.apply_components(model, ["pause_head", "pause_embedding"], "mlp:last_block")
    assert summary.components == ["mlp:last_block", "pause_head", "pause_embedding"]
    assert summary.trainable_params == mlp_params("qwen2") + 2 * D + 2 + D


# --- bad choices: one line, exit 2, nothing written ----------------------------------------------------


def test_a_block_without_readable_attention_is_one_line():
    with torch.device("meta"):
        mamba = AutoModelForCausalLM.from_config(MambaConfig(vocab_size=64, hidden_size=D, num_hidden_layers=2))
    with pytest.raises(UsageError, match=r"^--trainable_layers attention:last_block: block 1 of MambaModel "
                                         r"\(MambaBlock\) has no attention module unfreeze can read"):
        trainable.check_choice(mamba, "attention:last_block")
    with pytest.raises(UsageError, match=r"cannot tell the feed-forward of block 0 of MambaModel \(MambaBlock\) "
                                         r"among mixer \(its attention cannot be read\)"):
        trainable.check_choice(mamba, "mlp:blocks:0")  # the mixer is no feed-forward
    assert trainable.check_choice(mamba, "blocks:0") and trainable.check_choice(mamba, "lora:last_block")


@pytest.mark.parametrize("choice,said", [
    ("blocks:9-3", "trainable_layers='blocks:9-3': a range A-B needs A <= B (9-3 runs backwards; write 3-9)"),
    ("lora+mlp:blocks:", "trainable_layers='lora+mlp:blocks:': invalid choice"),
    ("mlp:blocks:1+lora+", "trainable_layers='mlp:blocks:1+lora+': an empty term"),
    ("lora+lora:last_block", "lora and lora:last_block are two LoRA terms"),
    ("blocks:99", "--trainable_layers blocks:99: the model has blocks 0-1 (no block 99)"),
    ("attention:last_blocks:3", "--trainable_layers attention:last_blocks:3: N must be between 1 and the model's 2"),
])
def test_classify_bad_choices_are_one_line_and_exit_2(tmp_path, capsys, spam_csv_dir, byte_tokenizer_dir, choice,
                                                     said):
    out = tmp_path / "run"
    code = main(["classify", "--weights", "random", "--model_config", '{"n_layer":2,"n_embd":32,"n_head":2}',
                 "--data", str(spam_csv_dir), "--tokenizer", str(byte_tokenizer_dir), "--trainable_layers", choice,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and len(err) == 1 and said in err[0], err


@pytest.mark.parametrize("choice,said", [
    ("blocks:99", "trainable_layers blocks:99: the model has blocks 0-1 (no block 99)"),
    ("attention:last_block", "attention:last_block: block 1 of MambaModel (MambaBlock) has no attention module"),
    ("blocks:9-3", "trainable_layers='blocks:9-3': a range A-B needs A <= B"),
    ("lora_alternative", "sft's LoRA is peft's"),
])
def test_sft_bad_choices_are_one_line_and_exit_2(tmp_path, capsys, pause_data, choice, said):
    model = tmp_path / "model"
    config = MambaConfig(vocab_size=SFT_V, hidden_size=D, num_hidden_layers=2) if "attention" in choice else \
        GPT2Config(vocab_size=SFT_V, n_embd=D, n_layer=2, n_head=2, n_positions=64)
    config.save_pretrained(model)
    save_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "run"
    code = main(["sft", f"model={model}", "weights=random", f"tokenizer={tmp_path / 'tok'}", f"data={pause_data}",
                 f"trainable={choice}", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and len(err) == 1 and said in err[0], err


def test_trainable_is_the_same_option_in_both_tasks(tmp_path):
    from unfreeze.config import parse_args
    from unfreeze.recipes.classify.config import ClassifyConfig
    from unfreeze.recipes.sft.config import SFTConfig

    classify = parse_args(ClassifyConfig, ["--trainable", "mlp:last_block"], "unfreeze classify")
    assert classify.trainable_layers == "mlp:last_block"
    assert parse_args(SFTConfig, ["--trainable", "lora:last_blocks:2+new_tokens"], "unfreeze sft").trainable_layers == (
        "lora:last_blocks:2+new_tokens")
    assert json.loads(json.dumps(parse_args(SFTConfig, [], "unfreeze sft").trainable_layers)) is None


def test_suggest_candidates_keep_block_sets_whole():
    from unfreeze.recipes.suggest.candidates import parse_candidates

    assert parse_candidates("last_layer, blocks:3,7,9-11,mlp:last_block+norms") == [
        "last_layer", "blocks:3,7,9-11", "mlp:last_block+norms"]


# --- the words in other stacks --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_lora_on_a_block_set_is_peft_layers_to_transform_and_peft_adapts_exactly_those_layers(arch):
    import yaml
    from peft import get_peft_model

    import unfreeze
    from unfreeze.export.peft import peft_config

    chosen = unfreeze.select(AutoModelForCausalLM.from_config(causal_config(arch)), "lora:last_blocks:2",
                             lora_rank=RANK, lora_alpha=4)
    config = peft_config(chosen.plan())
    assert list(config.layers_to_transform) == [L - 2, L - 1] and not config.modules_to_save
    theirs = get_peft_model(AutoModelForCausalLM.from_config(causal_config(arch)), config)
    adapted = {name.split(".lora_A.")[0].removeprefix("base_model.model.") for name, _ in theirs.named_parameters()
               if ".lora_A." in name}
    assert adapted == set(chosen.plan().lora) and all(f".{L - 3}." not in name for name in adapted)
    keys = yaml.safe_load(chosen.export("axolotl"))
    assert keys["peft_layers_to_transform"] == [L - 2, L - 1] and keys["peft_layers_pattern"] == [config.layers_pattern]


def test_sft_lora_on_a_block_with_new_tokens_is_one_peft_config():
    from unfreeze.export.peft import peft_config
    from unfreeze.export.plan import pause_plan

    model = pause_model("llama", lora_blocks=[L - 1])
    summary = trainable.apply_components(model, [], "lora:last_block+new_tokens")
    config = peft_config(pause_plan(model, summary.components))
    assert list(config.layers_to_transform) == [L - 1] and set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.trainable_token_indices == {"model.embed_tokens": [SFT_V]}  # the pause row of V + 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("choice,start", [("attention:last_block", L), ("lora:last_block", L), ("mlp:blocks:1-2", 2)])
def test_classify_caches_the_prefix_before_the_first_word_that_trains(arch, choice, start):
    from unfreeze.cache.memory import build_cache, frozen_prefix_stages, plan_cache
    from unfreeze.training.loop import ClassifierInputs

    model = make_model(arch)
    trainable.apply_preset(model, choice, lora_rank=RANK, lora_alpha=4, seed=0)
    plan = plan_cache(model, frozen_prefix_stages(model.stage_modules()), [9] * 4, model.hidden_size, torch.float32)
    assert plan.start_stage == start and not plan.pooled  # stage s is block s-1: the first block that trains
    tokens = {"train": list(padded_batch(arch, (9, 9, 4, 2), seed=3).unbind(0))}
    cache = build_cache(model, plan, tokens, torch.device("cpu"), 2, None)
    with torch.no_grad():
        cached = ClassifierInputs(model, tokens, cache, torch.device("cpu"), None)("train", torch.tensor([2, 0, 3]))
        uncached = ClassifierInputs(model, tokens, None, torch.device("cpu"), None)("train", torch.tensor([2, 0, 3]))
    torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-5)
