"""`unfreeze classify`'s model: which base model, its config, tokenizer and padding token, and the classifier.

`--model` (any hub id, local folder or `.gguf` file) replaces `--model_size`, whose GPT-2 names keep their
meaning. GPT-2 keeps the reference's padding semantics (pad with 50256, no attention mask); every other
model pads with its own pad token (eos where it has none) under an attention mask (see
`unfreeze.models.classifier`).
"""

from __future__ import annotations

import torch

from unfreeze.errors import UsageError
from unfreeze.models import loading, trainable
from unfreeze.models.classifier import PAD_TOKEN_ID, DecoderClassifier
from unfreeze.models.gguf import is_gguf, split_source
from unfreeze.models.structure import attention_implementation, check_staged_forward, read_structure
from unfreeze.tasks.classify_config import ClassifyConfig


def model_source(cfg: ClassifyConfig) -> tuple[str, str]:
    """(what to load, the flag that named it): --model when given, else --model_size (GPT-2 names kept)."""
    if cfg.model is not None:
        return cfg.model, "--model"
    return loading.resolve_model_id(cfg.model_size), "--model_size"


def is_gpt2(config) -> bool:
    """GPT-2 keeps the reference's padding semantics (pad 50256, no attention mask)."""
    return getattr(config, "model_type", "gpt2") == "gpt2"


def body_config(cfg: ClassifyConfig):
    """The base model's config after --model_config, checked (sizes, heads) without building anything."""
    source, flag = model_source(cfg)
    overrides = loading.parse_model_config(cfg.model_config)
    config = loading.decoder_config(source, overrides, flag)
    loading.without_dropout(config)
    loading.fused_activation(config)
    config._attn_implementation = attention_implementation(config)  # SDPA where the architecture has it, else eager
    return config


def check_structure(cfg: ClassifyConfig, config) -> None:
    """The model's stages can be read, the preset's blocks exist and `bias` selects something beyond the head (on
    the meta device: nothing allocated)."""
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            body = AutoModel.from_config(config)
    except Exception as err:  # noqa: BLE001 - an architecture transformers cannot build
        raise UsageError(f"{model_source(cfg)[1]}: cannot build a {getattr(config, 'model_type', '?')} base model "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None
    trainable.preset_blocks(cfg.trainable_layers, len(read_structure(body).blocks))
    if cfg.trainable_layers == "bias":  # on a model without biases it selects only the head: said before any work
        trainable.preset_selection(DecoderClassifier(body), "bias")  # (`norms` is judged on the built model)


def load_body(cfg: ClassifyConfig, config):
    """The base model: random (seeded) from `config`, or pretrained weights from --model/--model_size."""
    from transformers import AutoModel, GPT2Model

    source, flag = model_source(cfg)
    if cfg.weights == "random":
        # Random rows use transformers' initialisation (GPT-2: normal, std 0.02) — the reference's own
        # model uses PyTorch defaults (embeddings N(0, 1)); see README.
        torch.manual_seed(cfg.seed)
        return GPT2Model(config) if is_gpt2(config) else AutoModel.from_config(config)
    folder, extra = split_source(source, flag)
    try:
        if is_gpt2(config) and not extra:
            return GPT2Model.from_pretrained(folder, config=config)
        return AutoModel.from_pretrained(folder, config=config, dtype=torch.float32, **extra)
    except Exception as err:
        hint = f"{flag} /path/to/local/model_folder (or --weights random)"
        raise loading.offline_error("pretrained weights", source, hint, err) from None


def build_model(cfg: ClassifyConfig, config=None, pad_token_id: int = PAD_TOKEN_ID,
                num_classes: int = 2) -> DecoderClassifier:
    """The base model (pretrained or random) + a fresh Linear(hidden, num_classes) head, seeded like the reference."""
    config = config if config is not None else body_config(cfg)
    body = load_body(cfg, config).eval()
    torch.manual_seed(cfg.seed)  # the reference reseeds right before creating the head
    gpt2 = is_gpt2(config)
    model = DecoderClassifier(body, num_classes=num_classes, causal=not cfg.disable_causal_mask,
                              token_pos=cfg.trainable_token_pos, average=cfg.average_embeddings,
                              pad_token_id=PAD_TOKEN_ID if gpt2 else pad_token_id, reference_padding=gpt2)
    if not gpt2:  # an architecture whose forward is not embeddings -> blocks -> norm is refused here
        check_staged_forward(model._staged, model.pad_token_id, model.structure.token_embedding.weight.shape[0],
                             causal=model.causal)
    return model


def build_trainable_model(cfg: ClassifyConfig, config=None, pad_token_id: int = PAD_TOKEN_ID,
                          num_classes: int = 2) -> tuple[DecoderClassifier, trainable.TrainableSummary]:
    """`build_model` + `--trainable_layers`: the classifier, and what it trains.

    LoRA's A matrices are drawn from the global generator right after the seeded head, in module order:
    the reference calls `replace_linear_with_lora` at exactly that point, so on the same weights both tools
    start from identical adapters (tests/test_bench_vs_reference.py).
    """
    model = build_model(cfg, config, pad_token_id, num_classes)
    summary = trainable.apply_preset(model, cfg.trainable_layers, cfg.lora_rank, cfg.lora_alpha, seed=None,
                                     lora_layout=cfg.lora_layout)
    return model, summary


UNBOUNDED_CONTEXT = 2048  # models whose config sets no length (BLOOM's ALiBi): BLOOM's training length


def context_size(config) -> int:
    """The longest input the model takes (GPT-2's n_positions, max_position_embeddings, MPT's max_seq_len)."""
    for key in ("n_positions", "max_position_embeddings", "max_seq_len"):
        if isinstance(getattr(config, key, None), int) and getattr(config, key) > 0:
            return getattr(config, key)
    return UNBOUNDED_CONTEXT


def load_tokenizer(cfg: ClassifyConfig):
    """--tokenizer, else the model's own tokenizer (a .gguf file carries one)."""
    from transformers import AutoTokenizer

    source, flag = (cfg.tokenizer, "--tokenizer") if cfg.tokenizer else model_source(cfg)
    if not is_gguf(source):
        fix = "" if cfg.tokenizer else "; pass --tokenizer FOLDER"
        return loading.load_tokenizer(source, flag=flag, fix=fix)
    folder, extra = split_source(source, flag)
    try:
        return AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as err:  # noqa: BLE001 - a GGUF file without a usable tokenizer
        raise UsageError(f"{flag} {source}: no usable tokenizer in the GGUF file ({type(err).__name__}); "
                         "pass --tokenizer FOLDER") from None


def padding_token(tokenizer, config, cfg: ClassifyConfig) -> int:
    """Models other than GPT-2 pad with their pad token, else their eos token (tokenizer first, then config)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(config, "pad_token_id", None),
                  getattr(config, "eos_token_id", None)):
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and value >= 0:
            return value
    raise UsageError(f"{cfg.tokenizer and '--tokenizer' or model_source(cfg)[1]}: the tokenizer has neither a pad "
                     "nor an eos token to pad with; use a tokenizer that defines one")
