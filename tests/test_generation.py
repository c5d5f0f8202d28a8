"""Batched greedy decoding: the cached path equals the uncached one, left padding changes nothing, and the
pause temperature rescales the odds of pausing and nothing else.

The decoding tests run on the test device (`device` fixture). They compare token ids, which are equal or
not on every device: the tiny LM's large initialisation keeps its logits far apart, so the float
differences between kernels (CUDA) cannot flip a greedy choice."""

from __future__ import annotations

import math

import pytest
import torch

from unfreeze.models.generation import (
    Generation,
    apply_pause_temperature,
    greedy_generate,
    left_pad,
    positions_from_mask,
    step_function,
)

V = 300  # tiny vocabulary; id V-1 is <|endoftext|>, the pause token (when added) is id V
EOS = V - 1


def tiny_lm(seed: int = 0):
    """A random 2-layer GPT-2. initializer_range=0.5 makes its greedy outputs varied (the default 0.02
    repeats one token forever, which would let a broken cache pass)."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=128, initializer_range=0.5,
                        bos_token_id=EOS, eos_token_id=EOS)
    return GPT2LMHeadModel(config).eval()


def word_tokenizer():
    """A tokenizer whose vocabulary is "t0".."t298" + <|endoftext|> (ControlTokenLM needs one)."""
    from transformers import GPT2TokenizerFast

    vocab = {f"t{i}": i for i in range(V - 1)} | {"<|endoftext|>": EOS}
    return GPT2TokenizerFast(vocab=vocab, merges=[])


def tiny_pause_model(pause_bias: float = -2.0, seed: int = 0):
    """The tiny LM + one pause token; the head's bias sets how often it pauses (-2: about a third)."""
    from unfreeze.models.control.tokens import ControlTokenLM

    model = ControlTokenLM.from_base(tiny_lm(seed), word_tokenizer(), control_tokens=["<|pause|>"])
    with torch.no_grad():
        model.pause_head.bias[0] = pause_bias
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are latency-bound: with 2 threads on a busy machine, every op waits for a second
    thread to be scheduled (15 ms per layer norm was measured). One thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm(device):
    return tiny_lm().to(device)


@pytest.fixture(scope="module")
def pause_model(device):
    return tiny_pause_model().to(device)


def prompts_of_lengths(*lengths: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, EOS, (n,), generator=generator).tolist() for n in lengths]


def decode(step, prompts, **kwargs) -> list[list[int]]:
    """Greedy decoding of `prompts`; the batch goes to `device` (default: the CPU, where the fakes run)."""
    kwargs = {"eos_id": EOS, "pad_id": EOS, "max_new_tokens": 24} | kwargs
    return [g.tokens for g in greedy_generate(step, prompts, **kwargs)]


# --- padding helpers ----------------------------------------------------------------------------------


def test_left_pad_and_positions_count_real_tokens_only():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # The padded row's only token is at position 0, as it would be alone.
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


# --- cache equivalence ----------------------------------------------------------------------------------


def test_cached_equals_uncached_plain_lm(lm, device):
    prompts = prompts_of_lengths(3, 9, 5, 1)
    cached = decode(step_function(lm), prompts, device=device)
    uncached = decode(step_function(lm), prompts, use_cache=False, device=device)
    assert cached == uncached
    assert all(len(set(row)) > 3 for row in cached), "outputs too repetitive to test anything"


def test_left_padded_batch_equals_each_prompt_alone(lm, device):
    """Wrong position ids (counting the padding) would shift every padded row: caught here."""
    prompts = prompts_of_lengths(2, 11, 6, 4)
    step = step_function(lm)
    batched = decode(step, prompts, device=device)
    alone = [decode(step, [prompt], device=device)[0] for prompt in prompts]
    assert batched == alone


def test_cached_equals_uncached_pause_model(pause_model, device):
    prompts = prompts_of_lengths(3, 9, 5, 1)
    pause_id = pause_model.control_token_ids[0]
    step = step_function(pause_model)
    cached = decode(step, prompts, pause_ids=[pause_id], device=device)
    uncached = decode(step, prompts, pause_ids=[pause_id], use_cache=False, device=device)
    assert cached == uncached
    # The test means something only if pauses were emitted and fed back, between normal tokens.
    flat = [tok for row in cached for tok in row]
    assert 0 < flat.count(pause_id) < len(flat) / 2


def test_pause_model_padded_batch_equals_each_prompt_alone(pause_model, device):
    prompts = prompts_of_lengths(7, 2, 12)
    step = step_function(pause_model)
    ids = pause_model.control_token_ids
    assert decode(step, prompts, pause_ids=ids, device=device) == [
        decode(step, [p], pause_ids=ids, device=device)[0] for p in prompts]


def test_pause_model_without_control_tokens_decodes_like_the_plain_lm(lm, device):
    from unfreeze.models.control.tokens import ControlTokenLM

    plain = ControlTokenLM.from_base(lm, word_tokenizer(), control_tokens=[]).to(device)
    prompts = prompts_of_lengths(4, 8)
    assert decode(step_function(plain), prompts, device=device) == decode(step_function(lm), prompts, device=device)


# --- stopping --------------------------------------------------------------------------------------------


class CountingStep:
    """A fake model: next token = last input token + 1 (mod 10); records what the decoder passes in."""

    vocab = 10

    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, attention_mask, position_ids, past_key_values, use_cache):
        self.calls.append((input_ids.clone(), attention_mask.clone(), position_ids.clone(), past_key_values))
        nxt = (input_ids[:, -1] + 1) % self.vocab
        logprobs = torch.full((input_ids.shape[0], self.vocab), -10.0)
        logprobs[torch.arange(input_ids.shape[0]), nxt] = -0.01
        return logprobs, (past_key_values or 0) + 1


def test_eos_ends_a_row_and_the_length_limit_ends_the_rest():
    step = CountingStep()
    out = greedy_generate(step, [[4, 5], [0]], eos_id=8, pad_id=9, max_new_tokens=5)
    assert out[0] == Generation(tokens=[6, 7, 8], stopped_at_eos=True)
    assert out[1] == Generation(tokens=[1, 2, 3, 4, 5], stopped_at_eos=False)
    assert [g.num_generated for g in out] == [3, 5]
    assert len(step.calls) == 5  # the prompt, then one call per new token except the last
    ids, mask, positions, past = step.calls[-1]
    assert ids.shape == (2, 1) and past == 4  # one token per row, with the cache
    # Row 0 finished after its EOS: the padding fed afterwards is masked; positions keep counting.
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert mask[1].tolist() == [0, 1, 1, 1, 1, 1]
    assert positions.tolist() == [[5], [4]]


def test_all_rows_at_eos_stop_early():
    step = CountingStep()
    out = greedy_generate(step, [[6], [5]], eos_id=[8, 7], pad_id=0, max_new_tokens=50)
    assert [g.tokens for g in out] == [[7], [6, 7]]
    assert len(step.calls) == 2


def test_max_length_counts_each_rows_own_prompt():
    """One batch, prompts of 2, 5 and 1 tokens, max_length 8: each row stops at 8 tokens in all (6, 3 and
    7 new ones), not at a budget set by the longest prompt or the padded width."""
    step = CountingStep()
    out = greedy_generate(step, [[0, 1], [0, 1, 2, 3, 4], [6]], eos_id=None, pad_id=9, max_new_tokens=None,
                          max_length=8)
    assert [g.tokens for g in out] == [[2, 3, 4, 5, 6, 7], [5, 6, 7], [7, 8, 9, 0, 1, 2, 3]]
    assert [len(p) + g.num_generated for p, g in zip([[0, 1], [0] * 5, [6]], out)] == [8, 8, 8]
    assert not any(g.stopped_at_eos for g in out)
    assert len(step.calls) == 7  # the prompt, then until the row with the most room is done
    # The middle row stopped after 3 tokens: what it is fed afterwards is masked out.
    _, mask, _, _ = step.calls[-1]
    assert mask[1].tolist() == [1] * 5 + [1, 1, 1, 0, 0, 0]


def test_the_tighter_of_max_new_tokens_and_max_length_wins_per_row():
    step = CountingStep()
    out = greedy_generate(step, [[0, 1], [0, 1, 2, 3, 4], [6]], eos_id=None, pad_id=9, max_new_tokens=4,
                          max_length=8)
    assert [g.num_generated for g in out] == [4, 3, 4]
    # An EOS still ends a row before its budget.
    out = greedy_generate(CountingStep(), [[0, 1], [6]], eos_id=4, pad_id=9, max_new_tokens=None, max_length=20)
    assert out[0] == Generation(tokens=[2, 3, 4], stopped_at_eos=True)
    assert out[1].tokens[-1] == 4 and out[1].stopped_at_eos


def test_max_length_batch_equals_each_prompt_alone(lm, device):
    prompts = prompts_of_lengths(2, 11, 6)
    step = step_function(lm)
    batched = decode(step, prompts, max_new_tokens=None, max_length=16, device=device)
    assert [len(p) + len(row) for p, row in zip(prompts, batched)] == [16, 16, 16]
    assert batched == [decode(step, [p], max_new_tokens=None, max_length=16, device=device)[0] for p in prompts]


@pytest.mark.parametrize("limits, message", [
    ({"max_new_tokens": None, "max_length": None}, "max_length"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 5, "max_length": 3}, "prompt 2 has 3 tokens"),
])
def test_impossible_length_limits_are_rejected(limits, message):
    with pytest.raises(ValueError, match=message):
        greedy_generate(CountingStep(), [[1], [1, 2, 3]], eos_id=None, pad_id=0, **limits)


# --- pause temperature -----------------------------------------------------------------------------------


def random_logprobs(rows: int = 4, vocab: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(rows, vocab, generator=generator) * 3, dim=-1)


def pause_odds(logprobs: torch.Tensor, pause_ids) -> torch.Tensor:
    p = logprobs[:, pause_ids].exp().sum(-1)
    return p / (1 - p)


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0, 2.5])
def test_pause_temperature_keeps_the_other_tokens_ratios(temperature):
    logprobs, pause_ids = random_logprobs(), [3, 7]
    new = apply_pause_temperature(logprobs, pause_ids, temperature)
    others = [i for i in range(logprobs.shape[1]) if i not in pause_ids]
    # Ratios among normal tokens (differences of log-probs) and among pause tokens are unchanged.
    diff = lambda lp, ids: lp[:, ids] - lp[:, ids[:1]]  # noqa: E731
    torch.testing.assert_close(diff(new, others), diff(logprobs, others))
    if temperature > 0:
        torch.testing.assert_close(diff(new, pause_ids), diff(logprobs, pause_ids))
        torch.testing.assert_close(pause_odds(new, pause_ids), temperature * pause_odds(logprobs, pause_ids))
    torch.testing.assert_close(new.exp().sum(-1), torch.ones(4))


def test_pause_temperature_one_is_the_identity_and_zero_never_pauses():
    logprobs = random_logprobs()
    assert apply_pause_temperature(logprobs, [3], 1.0) is logprobs
    zero = apply_pause_temperature(logprobs, [3], 0.0)
    assert torch.isneginf(zero[:, 3]).all()


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 4.0])
def test_pause_temperature_has_no_nan_when_the_pause_is_certain_or_impossible(temperature):
    certain = torch.full((1, 6), float("-inf"))
    certain[0, 2] = 0.0  # p(pause) = 1, every other token -inf
    impossible = torch.randn(1, 6)
    impossible[0, 2] = float("-inf")
    impossible = torch.log_softmax(impossible, dim=-1)  # p(pause) = 0
    new = apply_pause_temperature(torch.cat([certain, impossible]), [2], temperature)
    assert not torch.isnan(new).any()
    torch.testing.assert_close(new.exp().sum(-1), torch.ones(2))
    if temperature == 0:
        # Nothing but the pause had mass: the other tokens become uniform, the pause impossible.
        assert torch.isneginf(new[0, 2]) and torch.allclose(new[0, [0, 1, 3, 4, 5]], torch.full((5,), -math.log(5)))
    else:
        assert new[0, 2] == 0.0
    torch.testing.assert_close(new[1], impossible[0])


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_bad_pause_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="pause temperature"):
        apply_pause_temperature(random_logprobs(), [3], temperature)


def test_pause_temperature_zero_decodes_exactly_like_the_plain_lm(device):
    """log p(tok) = log p_lm(tok) + log p_head(use LM): without pauses the argmax is the LM's argmax."""
    chatty = tiny_pause_model(pause_bias=-1.0).to(device)  # pauses more often than not
    prompts = prompts_of_lengths(3, 9, 5)
    ids = chatty.control_token_ids
    with_pauses = decode(step_function(chatty), prompts, pause_ids=ids, device=device)
    assert sum(row.count(ids[0]) for row in with_pauses) > 10
    never = decode(step_function(chatty), prompts, pause_ids=ids, pause_temperature=0.0, device=device)
    assert all(ids[0] not in row for row in never)
    assert never == decode(step_function(chatty.base), prompts, device=device)


def test_higher_pause_temperature_pauses_more(pause_model, device):
    prompts = prompts_of_lengths(3, 9, 5, 1)
    ids = pause_model.control_token_ids
    counts = [sum(row.count(ids[0]) for row in decode(step_function(pause_model), prompts, pause_ids=ids,
                                                      pause_temperature=t, device=device))
              for t in (0.0, 1.0, 50.0)]
    assert counts[0] == 0 < counts[1] < counts[2]
