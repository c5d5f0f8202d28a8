"""The pause-token model: the formula, the delta embedding, the head, trainability, save/load."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pause_helpers import PAUSE, tiny_base, tiny_model, tiny_tokenizer
from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import ControlTokenLM, IGNORE_INDEX
from unfreeze.models.trainable import COMPONENTS, apply_components

V = 257  # tiny vocabulary; the pause token gets id 257


def batch(seed: int = 0, B: int = 3, T: int = 12, with_pauses: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    if with_pauses:
        ids[0, 3] = ids[0, 4] = ids[1, 7] = ids[2, 2] = V
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # the prompt
    labels[2, -2:] = IGNORE_INDEX  # padding
    mask = torch.ones_like(ids)
    mask[2, -2:] = 0
    return ids, mask, labels


def test_pause_token_is_a_special_token_after_the_vocabulary():
    model = tiny_model()
    assert model.control_token_ids == [V] and model.vocab_size == V + 1
    ids = model.tokenizer(f"ab{PAUSE}cd", add_special_tokens=False).input_ids
    assert ids == model.tokenizer("ab", add_special_tokens=False).input_ids + [V] + model.tokenizer(
        "cd", add_special_tokens=False).input_ids
    assert model.tokenizer.decode(ids, skip_special_tokens=True) == "abcd"


def test_untrained_model_equals_base_on_normal_tokens():
    """Delta design: the base embedding matrix is untouched; only the head factor is added."""
    base = tiny_base(seed=3)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = ControlTokenLM.from_base(base, tiny_tokenizer(), [PAUSE])
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in reference.items())
    ids, mask, _ = batch(with_pauses=False)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        base_logprobs = torch.log_softmax(base(ids, attention_mask=mask).logits, -1)
        use_lm = out.logprobs[..., :V].logsumexp(-1, keepdim=True)  # = log p_head(use LM)
    torch.testing.assert_close(out.logprobs[..., :V] - use_lm, base_logprobs, rtol=0, atol=1e-5)
    # new row ~ N(0, var(existing rows)): same scale as the base embeddings
    emb_std = base.get_input_embeddings().weight.std().item()
    assert model.control_embeddings.shape == (1, 32)
    assert 0.3 * emb_std < model.control_embeddings.std().item() < 3 * emb_std


def test_pause_input_takes_the_delta_row():
    model = tiny_model()
    ids, _, _ = batch()
    embeds = model.embed(ids)
    assert torch.equal(embeds[0, 3], model.control_embeddings[0])
    assert torch.equal(embeds[0, 0], model.hf_model.get_input_embeddings().weight[ids[0, 0]])


@pytest.mark.parametrize("with_pauses", [True, False])
def test_combined_logprobs_are_normalised(with_pauses):
    model = tiny_model(seed=1)
    ids, mask, _ = batch(with_pauses=with_pauses)
    with torch.no_grad():
        logprobs = model(ids, attention_mask=mask).logprobs
    assert logprobs.shape == (3, 12, V + 1)
    torch.testing.assert_close(logprobs.logsumexp(-1), torch.zeros(3, 12), rtol=0, atol=1e-5)


def test_loss_equals_direct_computation_of_the_formula():
    model = tiny_model(seed=2)
    with torch.no_grad():
        model.pause_head.bias.copy_(torch.tensor([0.3, -0.2]))
    ids, mask, labels = batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
        base_out = model.base(inputs_embeds=model.embed(ids), attention_mask=mask, output_hidden_states=True)
        lm = torch.log_softmax(base_out.logits, -1)
        head = torch.log_softmax(model.pause_head(base_out.hidden_states[-1]), -1)
    lm_sum = pause_sum = 0.0
    active = 0
    for b, t in itertools.product(range(3), range(11)):
        target = labels[b, t + 1].item()
        if target == IGNORE_INDEX:
            continue
        active += 1
        if target >= V:  # control token: head NLL only
            pause_sum += -head[b, t, target - V].item()
        else:  # normal token: LM NLL + head NLL of "use the LM head"
            lm_sum += -lm[b, t, target].item()
            pause_sum += -head[b, t, -1].item()
    assert out.lm_loss.item() == pytest.approx(lm_sum / active, rel=1e-5)
    assert out.pause_loss.item() == pytest.approx(pause_sum / active, rel=1e-5)
    assert out.loss.item() == pytest.approx((lm_sum + pause_sum) / active, rel=1e-5)
    # ... which is the NLL of the combined distribution
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    nll = -out.logprobs[:, :-1].gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]
    assert out.loss.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    assert out.example_tokens.sum().item() == active


def test_zero_control_tokens_is_the_plain_lm():
    base = tiny_base(seed=4)
    model = ControlTokenLM.from_base(base, tiny_tokenizer(), [])
    ids, mask, labels = batch(with_pauses=False)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
        hf = base(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logprobs, torch.log_softmax(hf.logits, -1), rtol=0, atol=1e-6)
    assert out.loss.item() == pytest.approx(hf.loss.item(), rel=1e-5)
    assert out.pause_loss.item() == 0.0 and model.pause_head is None


def test_incremental_decoding_with_cache_matches_full_forward():
    """What greedy generation does: feed tokens one by one (a pause included) with past_key_values."""
    model = tiny_model(seed=5).eval()
    ids = torch.tensor([[5, 17, 42, V, 99, V, 3]])
    with torch.no_grad():
        full = model(ids).logprobs
        out = model(ids[:, :3], use_cache=True)
        steps = [out.logprobs[:, -1]]
        for t in range(3, ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logprobs[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 2:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_detached_head_sends_no_gradient_into_the_body(detach):
    model = tiny_model(seed=6, detach_head=detach)
    ids, mask, labels = batch()
    model(ids, attention_mask=mask, labels=labels).pause_loss.backward()
    body = [p for p in model.hf_model.transformer.h.parameters()]
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in body)
    assert reached is (not detach)
    assert model.pause_head.weight.grad.abs().sum() > 0


# --- what trains: the 18 rows of the seed table ---------------------------------------------------------

SEED_ROWS = [(pe, ph, lm, emb, lora)
             for pe, ph in ((True, True), (True, False), (False, True))
             for lm, emb in ((False, False), (True, False), (True, True))
             for lora in (False, True)]


def _components(pe, ph, lm, emb, lora):
    flags = {"pause_embedding": pe, "pause_head": ph, "lm_head": lm, "lm_embeddings": emb, "lora": lora}
    return [name for name, on in flags.items() if on]


def _expected_params(model, components):
    hf = model.hf_model
    expected = {}
    if "pause_embedding" in components:
        expected[id(model.control_embeddings)] = "control_embeddings"
    if "pause_head" in components:
        expected.update({id(p): "pause_head" for p in model.pause_head.parameters()})
    if "lm_head" in components:
        expected[id(hf.lm_head.weight)] = "lm_head"
    if "lm_embeddings" in components:
        expected[id(hf.transformer.wte.weight)] = "wte"
    if "lora" in components:
        for block in hf.transformer.h:
            attn = block.attn.c_attn
            expected.update({id(p): "lora" for p in (attn.lora_A["default"].weight, attn.lora_B["default"].weight)})
    return expected


@pytest.mark.parametrize("row", SEED_ROWS, ids=["-".join(_components(*r)) for r in SEED_ROWS])
def test_each_seed_row_trains_exactly_its_tensors(row):
    assert len(SEED_ROWS) == 18
    components = _components(*row)
    model = tiny_model(seed=7, detach_head=True)
    if "lora" in components:
        model.add_lora(r=4, alpha=8, dropout=0.0)
    summary = apply_components(model, components)
    expected = _expected_params(model, components)
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    assert {id(params[name]) for name in trainable} == set(expected)
    assert trainable == set(summary.tensors)
    assert summary.trainable_params == sum(params[n].numel() for n in trainable)
    assert summary.total_params == sum(p.numel() for p in params.values())
    # tied GPT-2 embeddings: untied exactly when one of LM head / LM embeddings trains
    tied = model.hf_model.lm_head.weight is model.hf_model.transformer.wte.weight
    assert tied is (row[2] == row[3])

    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-2)
    ids, mask, labels = batch()
    for _ in range(2):  # two steps: LoRA's A only gets a gradient once B is non-zero
        optimizer.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    for name, p in params.items():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_lm_head_alone_unties_and_leaves_the_input_embeddings_alone(tmp_path):
    model = tiny_model(seed=8)
    embeddings = model.hf_model.transformer.wte.weight.detach().clone()
    summary = apply_components(model, ["lm_head"])
    assert summary.untied and any("untied" in note for note in summary.notes)
    assert summary.tensors == ["base.lm_head.weight"]
    assert summary.total_params == tiny_model(seed=8).hf_model.num_parameters() + 32 + 2 * 33 + V * 32
    assert model.config.tie_word_embeddings is False
    model.save_pretrained(tmp_path / "m")
    loaded = ControlTokenLM.from_pretrained(str(tmp_path / "m"))
    assert loaded.hf_model.lm_head.weight is not loaded.hf_model.transformer.wte.weight
    assert torch.equal(loaded.hf_model.transformer.wte.weight, embeddings)
    both = apply_components(tiny_model(seed=8), ["lm_head", "lm_embeddings"])
    assert not both.untied and both.tensors == ["base.transformer.wte.weight"]


def test_set_trainable_rejects_bad_requests():
    model = tiny_model()
    with pytest.raises(UsageError, match="unknown component"):
        apply_components(model, ["pause_embeddings"])
    with pytest.raises(UsageError, match="nothing left to train"):
        apply_components(model, [])
    with pytest.raises(UsageError, match="no LoRA adapter"):
        apply_components(model, ["lora"])
    with pytest.raises(UsageError, match="no control tokens"):
        apply_components(tiny_model(control_tokens=()), ["pause_head"])
    assert set(COMPONENTS) == {"pause_embedding", "pause_head", "lm_head", "lm_embeddings", "lora"}


# --- save / load ------------------------------------------------------------------------------------------


def _trained_like(model):
    """Make every part non-trivial: LoRA B non-zero, head and rows perturbed."""
    model.add_lora(r=4, alpha=8, dropout=0.0)
    apply_components(model, ["pause_embedding", "pause_head", "lm_head", "lora"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = _trained_like(tiny_model(seed=9))
    ids, mask, labels = batch()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, labels=labels)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").exists()
    loaded = ControlTokenLM.from_pretrained(str(tmp_path / "m"))
    assert loaded.has_lora and loaded.control_token_ids == [V] and loaded.detach_head
    with torch.no_grad():
        got = loaded(ids, attention_mask=mask, labels=labels)
    assert torch.equal(got.logprobs, expected.logprobs)
    assert torch.equal(got.loss, expected.loss)
    assert loaded.tokenizer(PAUSE, add_special_tokens=False).input_ids == [V]
    merged = ControlTokenLM.from_pretrained(str(tmp_path / "m"), merge_adapter=True)
    assert not merged.has_lora
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, attention_mask=mask).logprobs, expected.logprobs, rtol=0, atol=1e-4)
    merged.save_pretrained(tmp_path / "m")  # saving over it: the old adapter must not come back
    assert not ControlTokenLM.from_pretrained(str(tmp_path / "m")).has_lora


def test_plain_model_folder_loads_with_zero_control_tokens(tmp_path):
    base = tiny_base(seed=10).eval()
    base.save_pretrained(tmp_path / "plain")
    tiny_tokenizer().save_pretrained(tmp_path / "plain")
    model = ControlTokenLM.from_pretrained(str(tmp_path / "plain"))
    assert model.control_token_ids == [] and model.vocab_size == V
    ids, mask, _ = batch(with_pauses=False)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logprobs,
                                   torch.log_softmax(base(ids, attention_mask=mask).logits, -1), rtol=0, atol=1e-5)
    with_pause = ControlTokenLM.from_pretrained(str(tmp_path / "plain"), control_tokens=[PAUSE])
    assert with_pause.control_token_ids == [V]


def test_corrupt_saved_folder_is_a_clear_error(tmp_path):
    model = tiny_model(seed=11)
    model.save_pretrained(tmp_path / "m")
    marker = tmp_path / "m" / "control_tokens.json"
    good = marker.read_text()
    marker.write_text("{not json")
    with pytest.raises(UsageError, match="control_tokens.json is corrupt"):
        ControlTokenLM.from_pretrained(str(tmp_path / "m"))
    marker.write_text(good)
    (tmp_path / "m" / "control_tokens.safetensors").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot read control_tokens.safetensors"):
        ControlTokenLM.from_pretrained(str(tmp_path / "m"))
    meta = json.loads(good)
    meta["control_token_ids"] = [5]
    marker.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="differ from the saved ids"):
        ControlTokenLM.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="could not load model"):
        ControlTokenLM.from_pretrained(str(tmp_path / "m"))


def test_tokenizer_shorter_than_the_model_gets_fillers():
    """Padded embedding matrices (more rows than tokens): control tokens still land after the rows."""
    model = ControlTokenLM.from_base(tiny_base(vocab_size=260), tiny_tokenizer(), [PAUSE])
    assert model.control_token_ids == [260]
    assert len(model.tokenizer) == 261
