"""`unfreeze classify` beyond Llama-shaped models: the attention implementation it picks (and records), whole runs on
eager-only, ALiBi, nested and per-layer-type-rotary architectures without a deprecation warning, presets that
select nothing beyond the head, and a structure check that notices a wrong sliding window.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from transformers import BloomConfig, LlamaConfig, MistralConfig

from unfreeze.errors import UsageError
from unfreeze.models import architectures as arch
from unfreeze.models import trainable
from unfreeze.models.staged import StagedForward
from unfreeze.models.structure import (
    attention_implementation,
    check_staged_forward,
    probe_length,
)


def test_attention_prefers_sdpa_and_falls_back_to_eager():
    assert attention_implementation(LlamaConfig()) == "sdpa"
    assert attention_implementation(BloomConfig()) == "eager"  # BLOOM has no SDPA attention: run, not refused
    assert attention_implementation(BloomConfig(), "eager") == "eager"
    with pytest.raises(UsageError, match="sdpa: BloomModel has no SDPA attention; use eager or auto"):
        attention_implementation(BloomConfig(), "sdpa")
    with pytest.raises(UsageError, match="'xformers': not one of auto, sdpa, eager, flash_attention_2"):
        attention_implementation(LlamaConfig(), "xformers")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="flash_attention_2: needs the flash-attn package and a CUDA GPU"):
            attention_implementation(LlamaConfig(), "flash_attention_2")


def test_the_probe_is_longer_than_every_window_and_chunk_up_to_a_cap():
    assert probe_length(LlamaConfig()) == 16
    assert probe_length(MistralConfig(sliding_window=4)) == 16  # past the window
    assert probe_length(MistralConfig(sliding_window=512)) == 516
    assert probe_length(MistralConfig(sliding_window=4096, max_position_embeddings=32768)) == 1024  # the cap
    assert probe_length(MistralConfig(sliding_window=4096, max_position_embeddings=600)) == 600


def _tiny(model_type: str):
    with arch.quiet():
        body = arch.build_body(model_type)
    return body


def test_the_structure_check_notices_a_wrong_window_only_past_it(monkeypatch):
    """A staged pass that gave sliding-window layers full attention is caught by a probe longer than the window
    (the default), and not by one inside it (what the check used to run: 8 tokens)."""
    body = _tiny("mistral")  # sliding window of 4 tokens on every layer
    staged = StagedForward(body)
    real_call = StagedForward._call

    def without_window(self, *args, **kwargs):
        window, self.config.sliding_window = self.config.sliding_window, 10**6
        try:
            return real_call(self, *args, **kwargs)
        finally:
            self.config.sliding_window = window

    monkeypatch.setattr(StagedForward, "_call", without_window)
    check_staged_forward(staged, arch.PAD, arch.VOCAB, length=4)  # within the window: the bug is invisible
    with pytest.raises(UsageError, match="MistralModel: its forward pass is not its blocks run in order"):
        check_staged_forward(staged, arch.PAD, arch.VOCAB)


def test_an_encoder_is_refused_in_one_line():
    from unfreeze.models.classifier import DecoderClassifier

    model = DecoderClassifier(_tiny("bert"), pad_token_id=arch.PAD, reference_padding=False)
    with pytest.raises(UsageError, match=r"^--model: BertModel: it is not a causal decoder"):
        check_staged_forward(model._staged, arch.PAD, arch.VOCAB)


@pytest.mark.parametrize("model_type,preset,missing", [("llama", "bias", "bias terms"),
                                                       ("olmo", "norms", "normalisation parameters")])
def test_a_preset_that_selects_only_the_head_is_one_line(model_type, preset, missing):
    model = arch.classifier(_tiny(model_type))
    with pytest.raises(UsageError) as caught:
        trainable.apply_preset(model, preset)
    assert str(caught.value) == (f"--trainable_layers {preset}: {type(model.body).__name__} has no {missing}, so only "
                                 "the new head would train; use --trainable_layers last_layer for that")
    assert trainable.apply_preset(model, "last_layer").trainable_params == 32 * 3 + 3  # the head-only preset still runs


# --- whole classify runs --------------------------------------------------------------------------------


def _saved_tiny(model_type: str, folder):
    """A tiny config of `model_type` saved where --model reads it, sized for the byte tokenizer (257 ids)."""
    config = arch.tiny_config(model_type)
    config.vocab_size = 300
    if hasattr(config, "max_position_embeddings"):
        config.max_position_embeddings = 128
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type,attention", [("bloom", "eager"), ("opt", "sdpa"), ("gemma3_text", "sdpa")])
def test_classify_runs_them_without_a_deprecation_warning(model_type, attention, spam_csv_dir, byte_tokenizer_dir,
                                                          tmp_path, caplog):
    """BLOOM (ALiBi, eager only), OPT (blocks one level down) and Gemma 3 (local and global rotary bases, sliding
    windows of 4 tokens on texts up to ~60): the default run, cached equal to uncached, attention recorded."""
    from unfreeze.config import config_from_mapping
    from unfreeze.recipes.classify.recipe import run as run_config
    from unfreeze.recipes.classify.config import ClassifyConfig

    folder = _saved_tiny(model_type, tmp_path / model_type)
    runs = {}
    for mode in ("off", "on"):
        values = dict(model=str(folder), weights="random", data=str(spam_csv_dir), tokenizer=str(byte_tokenizer_dir),
                      num_epochs=1, batch_size=4, eval_freq=5, eval_iter=2, out=str(tmp_path / mode), lr=1e-3,
                      cache_activations=mode)
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            runs[mode] = run_config(config_from_mapping(ClassifyConfig, values))
        deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
        assert not deprecations, deprecations
        assert not [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert runs["on"]["attn_implementation"] == runs["off"]["attn_implementation"] == attention
    assert runs["on"]["cache"]["kind"] == "hidden" and runs["on"]["cache"]["start_stage"] == arch.LAYERS
    for key in ("train_acc", "val_acc", "test_acc"):
        assert runs["on"][key] == runs["off"][key], key
    assert runs["on"]["history"]["train_loss"] == pytest.approx(runs["off"]["history"]["train_loss"], abs=1e-5)


# --- a real pretrained model past 512 tokens ------------------------------------------------------------

LONG = 520  # past 512 positions


@pytest.mark.real_weights
def test_smollm2_stages_equal_its_own_forward_past_512_tokens(smollm2_gguf):
    from unfreeze.recipes.classify.config import ClassifyConfig
    from unfreeze.recipes.classify.model import body_config, build_model, model_source

    cfg = ClassifyConfig(model=str(smollm2_gguf))
    source = model_source(cfg)
    config = body_config(source)
    model, _ = build_model(cfg, source, config, pad_token=config.eos_token_id, num_classes=2)  # the structure check
    ids = torch.randint(100, 40000, (2, LONG), generator=torch.Generator().manual_seed(0))
    ids[1, 300:] = model.pad_token_id
    mask = ids != model.pad_token_id
    with torch.no_grad():
        own = model.body(input_ids=ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
        staged = model.features(ids)
    scale = own[mask].abs().max().item()
    assert (staged - own)[mask].abs().max().item() <= 1e-5 * scale


@pytest.mark.real_weights
def test_smollm2_classify_runs_a_batch_past_512_tokens(smollm2_gguf, tmp_path):
    """classify end to end on the real model, a padded batch of 600 tokens in it, no deprecation warning."""
    import pandas as pd
    from conftest import make_spam_rows

    from unfreeze.config import config_from_mapping
    from unfreeze.recipes.classify.recipe import run as run_config
    from unfreeze.recipes.classify.config import ClassifyConfig

    rows = make_spam_rows(6, seed=3)  # ham, spam, ham, ...: each split gets one of each, a long and a short text
    texts = [" ".join([text] * (80 if i % 2 == 0 else 2)) for i, (_, text) in enumerate(rows)]
    frame = pd.DataFrame({"Label": [1 if label == "spam" else 0 for label, _ in rows], "Text": texts})
    data = tmp_path / "long"
    data.mkdir()
    for split, part in (("train", frame[:2]), ("validation", frame[2:4]), ("test", frame[4:])):
        part.to_csv(data / f"{split}.csv", index=False)
    values = dict(model=str(smollm2_gguf), data=str(data), context_length="600", trainable_layers="last_block",
                  num_epochs=1, batch_size=2, eval_freq=1, eval_iter=1, out=str(tmp_path / "run"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_config(config_from_mapping(ClassifyConfig, values))
    assert not [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert metrics["max_length"] == 600 and metrics["attn_implementation"] == "sdpa"
    assert metrics["cache"]["kind"] == "hidden" and metrics["cache"]["start_stage"] == 30
    assert metrics["history"]["train_loss"] and all(math.isfinite(x) for x in metrics["history"]["train_loss"])


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gemma3_text"])
def test_on_the_meta_device_the_presets_count_as_on_real_weights(model_type):
    """No forward runs on the meta device: the registration order stands in for the traced one."""
    from transformers import AutoModel

    from unfreeze.models.classifier import DecoderClassifier

    config = arch.tiny_config(model_type)
    with torch.device("meta"):
        meta = DecoderClassifier(AutoModel.from_config(config), num_classes=3)
    real = arch.classifier(_tiny(model_type))
    for preset in ("last_layer", "last_block", "last_two_blocks", "all", "norms"):
        assert (trainable.apply_preset(meta, preset).trainable_params
                == trainable.apply_preset(real, preset).trainable_params), preset


def test_disable_causal_mask_is_checked_too():
    """--disable_causal_mask hands the forward transformers' bidirectional mask: checked where it works, one line
    where the architecture cannot take it (BLOOM builds ALiBi from a 2D mask) or it does nothing (RWKV)."""
    arch.classifier(_tiny("llama"), causal=False)  # the first token sees the last; padding changes nothing
    with pytest.raises(UsageError, match=r"^--disable_causal_mask: BloomModel cannot run bidirectionally \(\w+Error"):
        arch.classifier(_tiny("bloom"), causal=False)
    with pytest.raises(UsageError, match="RwkvModel's first token does not see the last one with it"):
        arch.classifier(_tiny("rwkv"), causal=False)


def test_a_head_only_bias_preset_stops_classify_before_anything_is_written(spam_csv_dir, byte_tokenizer_dir, tmp_path):
    from unfreeze.config import config_from_mapping
    from unfreeze.recipes.classify.recipe import run as run_config
    from unfreeze.recipes.classify.config import ClassifyConfig

    folder = _saved_tiny("llama", tmp_path / "llama")
    out = tmp_path / "run"
    values = dict(model=str(folder), weights="random", data=str(spam_csv_dir), tokenizer=str(byte_tokenizer_dir),
                  trainable_layers="bias", num_epochs=1, out=str(out))
    with pytest.raises(UsageError, match="--trainable_layers bias: LlamaModel has no bias terms"):
        run_config(config_from_mapping(ClassifyConfig, values))
    assert not out.exists() or not any(out.iterdir())
