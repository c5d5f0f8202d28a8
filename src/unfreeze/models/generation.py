"""Batched greedy decoding with a key/value cache, for plain language models and pause models.

The decoder never looks inside the model. It talks to a *step function*

    step(input_ids, attention_mask, position_ids, past_key_values, use_cache) -> (logprobs, past_key_values)

that returns next-token log-probabilities at the last position, shape (batch, vocab). `step_function(model)`
builds one for a Hugging Face causal LM (log-softmax of its logits) and for `ControlTokenLM` (whose
`.logprobs` already are the combined LM + pause-head distribution over the extended vocabulary), so the
same loop decodes both, and a test can plug in any callable.

Left padding: prompts of unequal length are padded on the left so that every row's next token is at
the same column. The padded positions are masked out (attention_mask 0) and, just as important, the
position ids count only real tokens (`cumsum(mask) - 1`): a prompt's first token is at position 0
whatever its padding, so a padded row decodes exactly as it would alone.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# (input_ids, attention_mask, position_ids, past_key_values, use_cache) -> (last-position logprobs, past)
StepFn = Callable[..., tuple[torch.Tensor, object]]


@dataclass
class Generation:
    """One row's output: the generated ids (the EOS included when it was emitted)."""

    tokens: list[int]
    stopped_at_eos: bool

    @property
    def num_generated(self) -> int:
        """Decoding steps this row took (pauses and the final EOS count: each is one forward step)."""
        return len(self.tokens)


# --------------------------------------------------------------------------------------------------
# Pause temperature
# --------------------------------------------------------------------------------------------------


def check_pause_temperature(temperature: float) -> float:
    """A pause temperature must be a finite number >= 0 (0 = never pause, 1 = unchanged)."""
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"pause temperature must be a finite number >= 0, got {temperature}")
    return temperature


def apply_pause_temperature(
    logprobs: torch.Tensor, pause_ids: Sequence[int], temperature: float
) -> torch.Tensor:
    """Multiply the odds of pausing by `temperature` and renormalise; other tokens keep their ratios.

    With p = total probability of the pause tokens, the new distribution has pause odds
    p'/(1-p') = T * p/(1-p). In log space that is: add log T to every pause log-prob, then subtract
    the new normaliser log(T*p + (1-p)). Each pause token is scaled by the same factor, and so is each
    other token, so ratios *within* either group are unchanged (this is the seed's
    `PauseLogitsProcessor`, computed in log space so it cannot divide 0 by 0).

    Edge cases, all without NaN:
    - T = 0: pauses get -inf; the others are renormalised to sum to 1.
    - p = 1 (every other token at -inf) and T > 0: unchanged, the pause keeps probability 1.
    - p = 1 and T = 0: the model gives no ratio among the other tokens, so they become uniform
      (the seed's processor would pause anyway; here T = 0 means *never* pause).
    - p = 0: unchanged.
    """
    temperature = check_pause_temperature(temperature)
    if temperature == 1.0 or len(pause_ids) == 0:
        return logprobs
    logprobs = logprobs.float()
    index = torch.as_tensor(list(pause_ids), device=logprobs.device, dtype=torch.long)
    is_pause = torch.zeros(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
    is_pause[index] = True
    neg_inf = torch.tensor(float("-inf"), device=logprobs.device)
    # log(1-p) and log p, each from its own group so that p close to 1 loses no precision.
    log_other = torch.logsumexp(torch.where(is_pause, neg_inf, logprobs), dim=-1, keepdim=True)
    log_pause = torch.logsumexp(torch.where(is_pause, logprobs, neg_inf), dim=-1, keepdim=True)
    if temperature == 0.0:
        others = logprobs - log_other
        # Rows with no mass outside the pauses: uniform over the non-pause tokens.
        uniform = -math.log(logprobs.shape[-1] - len(set(pause_ids)))
        others = torch.where(torch.isneginf(log_other), torch.full_like(logprobs, uniform), others)
        return torch.where(is_pause, neg_inf, others)
    log_t = math.log(temperature)
    # logaddexp(-inf, x) = x, so p = 0 or p = 1 leave a finite normaliser.
    log_norm = torch.logaddexp(log_pause + log_t, log_other)
    return torch.where(is_pause, logprobs + log_t, logprobs) - log_norm


# --------------------------------------------------------------------------------------------------
# Step functions: a model -> (logprobs at the last position, cache)
# --------------------------------------------------------------------------------------------------


def _accepts(fn: Callable, name: str, via_kwargs: bool = True) -> bool:
    """Whether `fn` takes the keyword `name` (by name, or through **kwargs when `via_kwargs`)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (via_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()))


def step_function(model) -> StepFn:
    """Wrap a model into a step function (see the module docstring).

    - a model with `control_token_ids` (ControlTokenLM): its `.logprobs` are used as they are;
    - any other Hugging Face causal LM: `log_softmax(logits)`, computing logits for the last position
      only (`logits_to_keep=1`) because the prompt's other positions are never needed.
    """
    if hasattr(model, "control_token_ids"):
        # Only the last position is needed: if the model can skip the others, let it (the prompt's
        # (B, T, V) log-probs are most of a pause model's extra cost over the plain LM).
        keep = {"logits_to_keep": 1} if _accepts(model.forward, "logits_to_keep", via_kwargs=False) else {}

        def control_step(input_ids, attention_mask, position_ids, past_key_values, use_cache):
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, use_cache=use_cache, **keep)
            return out.logprobs[:, -1, :].float(), out.past_key_values

        return control_step

    extra = {"logits_to_keep": 1} if _accepts(model.forward, "logits_to_keep") else {}

    def lm_step(input_ids, attention_mask, position_ids, past_key_values, use_cache):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past_key_values, use_cache=use_cache, **extra)
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.past_key_values

    return lm_step


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), padded on the left to the longest prompt."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over real tokens only; padding gets 0 (it is masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# --------------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------------


def row_budgets(prompt_lengths: Sequence[int], max_new_tokens: int | None,
                max_length: int | None) -> list[int]:
    """New tokens each row may generate: the tighter of `max_new_tokens` and `max_length` - its prompt.

    `max_new_tokens` counts generated tokens only (pauses and EOS included); `max_length` counts the
    prompt too, as Hugging Face's `generate(max_length=...)` does (the PauseToken reference used 1024).
    Either may be None (no such limit), not both. A row whose prompt leaves no room is a ValueError.
    """
    if max_new_tokens is None and max_length is None:
        raise ValueError("set max_new_tokens, max_length or both: generation needs a length limit")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    budgets = []
    for row, length in enumerate(prompt_lengths):
        limits = [n for n in (max_new_tokens, None if max_length is None else max_length - length) if n is not None]
        if min(limits) < 1:
            raise ValueError(f"prompt {row + 1} has {length} tokens, which leaves no room under "
                             f"max_length={max_length}")
        budgets.append(min(limits))
    return budgets


@torch.inference_mode()
def greedy_generate(
    step: StepFn,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int | Sequence[int] | None,
    pad_id: int,
    max_new_tokens: int | None,
    max_length: int | None = None,
    use_cache: bool = True,
    pause_ids: Sequence[int] = (),
    pause_temperature: float = 1.0,
    device: torch.device | str | None = None,
) -> list[Generation]:
    """Greedy decoding of a batch of prompts (token id lists) until EOS or the row's length budget.

    Each row stops at EOS or after `row_budgets` new tokens: `max_new_tokens` generated tokens, or
    `max_length` tokens prompt included, whichever comes first *for that row* (a short prompt in a
    batch of long ones keeps its own, larger, budget).
    Every emitted token -- a pause included -- is fed back as the next input. With `use_cache` the
    prompt is run once and each step feeds one token per row plus the cache; without it every step
    re-runs the whole sequence (the reference the cached path must equal, token for token).
    A row that has finished keeps being fed padding (masked out) until the whole batch is done.
    """
    budgets = row_budgets([len(p) for p in prompts], max_new_tokens, max_length)
    pause_temperature = check_pause_temperature(pause_temperature)
    eos_ids = [] if eos_id is None else ([eos_id] if isinstance(eos_id, int) else list(eos_id))
    input_ids, mask = left_pad(prompts, pad_id, device)
    positions = positions_from_mask(mask)
    batch = input_ids.shape[0]
    eos_tensor = torch.as_tensor(eos_ids, dtype=torch.long, device=input_ids.device)
    budget_tensor = torch.as_tensor(budgets, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    generated: list[torch.Tensor] = []
    past = None

    # First step: the whole (padded) prompt.
    logprobs, past = step(input_ids, mask, positions, None, use_cache)
    for _ in range(max(budgets)):
        logprobs = apply_pause_temperature(logprobs, pause_ids, pause_temperature)
        next_ids = logprobs.argmax(dim=-1)
        # Finished rows emit padding, which is masked out below and dropped from the output.
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        generated.append(next_ids)
        active = ~done
        done = done | torch.isin(next_ids, eos_tensor) | (budget_tensor <= len(generated))
        if bool(done.all()):
            break
        # The new token is real for rows that were still running when it was chosen.
        mask = torch.cat([mask, active.long().unsqueeze(1)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if use_cache:
            logprobs, past = step(next_ids.unsqueeze(1), mask, positions[:, -1:], past, True)
        else:  # only the uncached reference path re-reads the whole sequence
            input_ids = torch.cat([input_ids, next_ids.unsqueeze(1)], dim=1)
            logprobs, _ = step(input_ids, mask, positions, None, False)

    rows = torch.stack(generated, dim=1).tolist()
    return _collect([row[:budget] for row, budget in zip(rows, budgets)], eos_ids)


def _collect(rows: list[list[int]], eos_ids: list[int]) -> list[Generation]:
    """Cut each row after its first EOS (what follows is padding)."""
    out = []
    for row in rows:
        cut = next((i for i, tok in enumerate(row) if tok in eos_ids), None)
        if cut is None:
            out.append(Generation(tokens=row, stopped_at_eos=False))
        else:
            out.append(Generation(tokens=row[: cut + 1], stopped_at_eos=True))
    return out


def max_positions(model) -> int | None:
    """The longest sequence the model's position embeddings allow (None when unknown/unbounded)."""
    base = getattr(model, "base", model)
    config = getattr(base, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
