"""Every model type in the installed transformers' causal-LM auto-mapping, as a tiny random model (see
`unfreeze.models.architectures`: width 32, 3 layers, vocabulary 128, sliding windows and attention chunks of
4 tokens).

Each type ends where docs/architectures.md says it does. A supported one, end to end:
* the stages equal the model's own forward on a padded 16-token batch (past every window and chunk), and
  restarting them at any block boundary from the hidden state alone changes nothing;
* cached equals uncached for `last_block` (the frozen-prefix cache of classify);
* the presets train what they name: counted from parameter names here, an oracle independent of the
  structure-based selection;
* an example gives the same logits alone and inside a padded batch.
A refused one raises one line (a UsageError), never a traceback. Tolerance everywhere: 1e-5 of the largest
entry compared (the stages run the model's own operations in the same order; measured: 0 on every type).
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

from unfreeze.cache import memory
from unfreeze.cache.policy import CacheRequest
from unfreeze.errors import UsageError
from unfreeze.models import architectures as arch
from unfreeze.models import trainable
from unfreeze.training.loop import ClassifierInputs

LENGTHS = (16, 11, 5)  # the longest is past every tiny window and chunk (4 tokens)
TYPES = arch.causal_lm_types()
PAGE = arch.read_doc(arch.DOC.read_text(encoding="utf-8")) if arch.DOC.exists() else {}
NAMED_IN_THE_ISSUE = {"gpt2", "gptj", "gpt_neox", "opt", "bloom", "falcon", "llama", "mistral", "mixtral", "qwen2",
                      "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "stablelm", "olmo",
                      "olmo2", "cohere", "granite", "starcoder2", "mpt"}


def _same_text(reason: str) -> str:
    """A reason with its numbers blanked (relative differences print differently across machines)."""
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", reason.replace("|", "/"))


def _close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = max(1.0, expected.abs().max().item())
    gap = (got - expected).abs().max().item() / scale
    assert gap <= 1e-5, f"{what}: relative difference {gap:.3g}"


def padded_batch(seed: int = 1) -> torch.Tensor:
    ids = torch.randint(1, arch.VOCAB, (len(LENGTHS), max(LENGTHS)), generator=torch.Generator().manual_seed(seed))
    for row, length in enumerate(LENGTHS):
        ids[row, length:] = arch.PAD
    return ids


def test_the_page_lists_every_causal_lm_type_and_the_issues_architectures_are_supported():
    assert set(PAGE) == set(TYPES), "stale: run python -m unfreeze.models.architectures"
    supported = {t for t, row in PAGE.items() if row.status == arch.SUPPORTED}
    assert len(supported) >= 25 and NAMED_IN_THE_ISSUE <= supported, NAMED_IN_THE_ISSUE - supported
    assert all(row.reason for row in PAGE.values() if row.status != arch.SUPPORTED)


@pytest.mark.parametrize("model_type", TYPES)
def test_every_causal_lm_architecture(model_type, monkeypatch):
    # The cache build measures the machine's matmul peak for its log (0.3 s each): not what this test checks.
    monkeypatch.setattr(memory, "matmul_peak_gflops", lambda *args, **kwargs: 1.0)
    listed = PAGE.get(model_type)
    assert listed is not None, "stale page: run python -m unfreeze.models.architectures"
    with arch.quiet():
        try:
            body = arch.build_body(model_type)
        except arch.NotApplicable as err:  # not a decoder-only text model, or transformers cannot build it small
            assert (listed.status, _same_text(listed.reason)) == (err.status, _same_text(err.reason))
            return
        try:
            model = arch.classifier(body)
        except UsageError as err:  # refused: one line naming why
            message = str(err)
            assert "\n" not in message and message.startswith("--model: ")
            assert (listed.status, _same_text(listed.reason)) == (arch.REFUSED, _same_text(message[9:]))
            return
        assert listed.status == arch.SUPPORTED, f"{model_type} now runs: regenerate docs/architectures.md"
        check_supported(model_type, model)


def check_supported(model_type: str, model) -> None:
    config = model._staged.config
    for key in ("sliding_window", "attention_chunk_size"):  # the batch is longer than any window or chunk
        assert not isinstance(getattr(config, key, None), int) or getattr(config, key) < max(LENGTHS)
    ids = padded_batch()
    mask = ids != arch.PAD
    with torch.no_grad():
        own = model.body(input_ids=ids, attention_mask=mask.long(), **model._staged.call_options).last_hidden_state
        features = model.features(ids)
        _close(features[mask], own[mask], "staged vs the model's own forward")
        prefix = model.embed(ids)
        for stage in range(1, model.final_stage + 1):  # restart at every boundary from the hidden state alone
            restarted = model.run_stages(model.run_stages(prefix, 1, stage, input_ids=ids), stage, input_ids=ids)
            _close(restarted[mask], features[mask], f"restarted at stage {stage}")
        batched = model(ids)
        alone = torch.cat([model(ids[row:row + 1, :n]) for row, n in enumerate(LENGTHS)])
        _close(batched, alone, "alone vs in a padded batch")
    check_cache(model, ids)
    check_preset_counts(model)


def check_cache(model, ids: torch.Tensor) -> None:
    trainable.apply_preset(model, "last_block")
    tokens = {"train": list(ids)}
    request = CacheRequest("on", None, "--cache_activations on", "--cache_budget_gb")
    cache, info, _ = memory.prepare(model, tokens, torch.device("cpu"), None, request, 2,
                                           logging.getLogger("test"))
    assert cache is not None and info["start_stage"] == model.num_blocks, info  # every block but the last cached
    indices = torch.tensor([2, 0, 1])
    with torch.no_grad():
        cached = ClassifierInputs(model, tokens, cache, torch.device("cpu"), None)("train", indices)
        uncached = ClassifierInputs(model, tokens, None, torch.device("cpu"), None)("train", indices)
    _close(cached, uncached, "cached vs uncached (last_block)")


def check_preset_counts(model) -> None:
    names = dict(model.named_parameters())
    numel = {name: p.numel() for name, p in names.items()}
    path = next(name for name, m in model.named_modules() if m is model.blocks)
    norm_path = next((name for name, m in model.named_modules() if m is model.final_norm), None)
    head = sum(numel[n] for n in numel if n.startswith("head."))

    def under(prefix: str | None) -> int:
        return 0 if prefix is None else sum(numel[n] for n in numel if n.startswith(prefix + "."))

    last = model.num_blocks - 1
    expected = {"last_layer": head, "all": sum(numel.values()),
                "last_block": under(f"{path}.{last}") + under(norm_path) + head,
                "last_two_blocks": under(f"{path}.{last}") + under(f"{path}.{last - 1}") + under(norm_path) + head}
    for preset, count in expected.items():
        assert trainable.apply_preset(model, preset).trainable_params == count, preset
    biases = sum(numel[n] for n in numel if n.rsplit(".", 1)[-1] == "bias" and not n.startswith("head."))
    if biases:
        assert trainable.apply_preset(model, "bias").trainable_params == biases + head
    else:  # nothing beyond the head: one line, not a silent head-only run
        with pytest.raises(UsageError, match="bias"):
            trainable.apply_preset(model, "bias")
    try:
        summary = trainable.apply_preset(model, "norms")
    except UsageError as err:
        assert "norm" in str(err) and under(norm_path) == 0  # a model without norm parameters (OLMo's LayerNorm)
    else:
        body = [n for n in summary.tensors if not n.startswith("head.")]
        assert body and all(names[n].dim() == 1 for n in body), body  # norms are per-feature scales and shifts
        assert under(norm_path) == 0 or any(n.startswith(norm_path + ".") for n in body)
