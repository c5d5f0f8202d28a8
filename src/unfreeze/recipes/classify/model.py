"""`unfreeze classify`'s model: the base model from the one loader, its tokenizer and padding, the classifier.

`--model` (any hub id, local folder or `.gguf` file) replaces `--model_size`, whose GPT-2 names keep their
meaning. GPT-2 keeps the reference's padding semantics (pad with 50256, no attention mask); every other
model pads with its own pad token (eos where it has none) under an attention mask (see
`unfreeze.models.classifier`).
"""

from __future__ import annotations

import torch

from unfreeze.errors import UsageError
from unfreeze.models import lora, trainable
from unfreeze.models.choice import parse_choice
from unfreeze.models.classifier import PAD_TOKEN_ID, DecoderClassifier
from unfreeze.models.loading import ModelSource
from unfreeze.models.model_config import check_fits_in_memory, is_gpt2, parse_model_config
from unfreeze.models.structure import attention_implementation, check_staged_forward, read_structure
from unfreeze.models.tokenizers import pad_token_id


def model_source(cfg) -> ModelSource:
    """The model a classify run (or a suggest candidate) loads: --model when given, else --model_size."""
    name, flag = (cfg.model, "--model") if cfg.model is not None else (cfg.model_size, "--model_size")
    return ModelSource(name, flag, cfg.weights, parse_model_config(cfg.model_config), "--model_config",
                       cfg.tokenizer, "--tokenizer")


def body_config(source: ModelSource, attention: str = "auto"):
    """The base model's config, checked (sizes, heads, memory) without building anything: dropout 0.0 as the
    reference trains (it also makes frozen layers deterministic, so they can be cached), GPT-2's fused GELU,
    and SDPA where the architecture has it, else eager (`models.structure.attention_implementation`)."""
    config = source.config(dropout=0.0, fused_activation=True)
    config._attn_implementation = attention_implementation(config, attention)
    check_fits_in_memory(config, source.overrides_flag if source.overrides else source.flag)
    return config


def check_structure(source: ModelSource, config, preset: str, lora_rank: int) -> None:
    """The model's stages can be read, the choice's blocks exist and their attention or MLP can be read, `bias`
    selects something beyond the head and a LoRA rank fits its layers (on the meta device: nothing allocated)."""
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            body = AutoModel.from_config(config)
    except Exception as err:  # noqa: BLE001 - an architecture transformers cannot build
        raise UsageError(f"{source.flag}: cannot build a {getattr(config, 'model_type', '?')} base model "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None
    read_structure(body)  # an architecture whose stages cannot be read: said before the words are
    terms = parse_choice(preset)
    sft_only = [term.text for term in terms if term.kind in ("new_tokens", "pause_head")]
    if sft_only:
        raise UsageError(f"--trainable_layers {sft_only[0]}: classify adds no tokens and has no pause head "
                         "(new_tokens and pause_head are sft's words)")
    if any(term.lora for term in terms):
        lora.check_rank(body, lora_rank, "--lora_rank")
    # `bias` on a model without biases selects only the head: said before any work (`norms` too)
    trainable.check_choice(DecoderClassifier(body), terms)


def build_model(cfg, source: ModelSource, config, pad_token: int = PAD_TOKEN_ID,
                num_classes: int = 2) -> tuple[DecoderClassifier, torch.Tensor]:
    """The base model (pretrained or random, seeded) + a fresh Linear(hidden, num_classes) head, seeded like the
    reference (with its bias for GPT-2; without, as transformers' `score`, for every other model); and torch's
    random state right after the head, where the reference draws LoRA's matrices.

    Random rows use transformers' initialisation (GPT-2: normal, std 0.02); the reference's own model uses
    PyTorch defaults (embeddings N(0, 1)); see README."""
    body = source.load("base", config, dtype=torch.float32, seed=cfg.seed).eval()
    torch.manual_seed(cfg.seed)  # the reference reseeds right before creating the head
    gpt2 = is_gpt2(config)
    model = DecoderClassifier(body, num_classes=num_classes, causal=not cfg.disable_causal_mask,
                              token_pos=cfg.trainable_token_pos, average=cfg.average_embeddings,
                              pad_token_id=PAD_TOKEN_ID if gpt2 else pad_token, reference_padding=gpt2,
                              head_bias=gpt2)  # other models: transformers' own head (`score`, no bias)
    after_head = torch.get_rng_state()
    if not gpt2:  # an architecture whose forward is not embeddings -> blocks -> norm is refused here
        check_staged_forward(model._staged, model.pad_token_id, model.structure.token_embedding.weight.shape[0],
                             causal=model.causal)
    return model, after_head


def make_trainable(model: DecoderClassifier, cfg, after_head: torch.Tensor) -> trainable.TrainableSummary:
    """`--trainable_layers` on a built classifier: exactly what classify trains, for classify and for every
    suggest candidate alike.

    LoRA's A matrices are drawn from torch's global generator in the state right after the seeded head, in
    module order: the reference calls `replace_linear_with_lora` at exactly that point, so on the same weights
    both tools start from identical adapters (tests/test_bench_vs_reference.py). The caller's random state is
    left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(after_head)
        return trainable.apply_preset(model, cfg.trainable_layers, cfg.lora_rank, cfg.lora_alpha, seed=None,
                                      lora_layout=cfg.lora_layout)


def build_trainable_model(cfg, source: ModelSource, config, pad_token: int = PAD_TOKEN_ID,
                          num_classes: int = 2) -> tuple[DecoderClassifier, trainable.TrainableSummary]:
    """`build_model` + `make_trainable`: the classifier, and what it trains."""
    model, after_head = build_model(cfg, source, config, pad_token, num_classes)
    return model, make_trainable(model, cfg, after_head)


def padding_token(tokenizer, config, source: ModelSource) -> int:
    """GPT-2 pads with 50256 (the reference); other models with their pad token, else their eos token."""
    if is_gpt2(config):
        return PAD_TOKEN_ID
    found = pad_token_id(tokenizer, config)
    if found is None:
        raise UsageError(f"{source.tokenizer_flag if source.tokenizer else source.flag}: the tokenizer has neither "
                         "a pad nor an eos token to pad with; use a tokenizer that defines one")
    return found
