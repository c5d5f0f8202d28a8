"""The setup pieces of `unfreeze sft`: the model with exactly its trainable parts, and the encoded data.

`recipes/sft/recipe.py` calls these from its `setup` step; each is a pure function of the config (plus logging).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unfreeze.errors import UsageError
from unfreeze.recipes.sft.config import COMPONENT_SWITCHES, SFTConfig


def model_source(config: SFTConfig):
    """The model an sft run starts from, as the one loader reads it (a saved pause-model folder aside)."""
    from unfreeze.models.loading import ModelSource
    from unfreeze.models.model_config import parse_model_config

    return ModelSource(config.model, "model", config.weights, parse_model_config(config.model_config, "model_config"),
                       "model_config", config.tokenizer, "tokenizer")


def build_model(config: SFTConfig, log: Any, dtype: Any = None):
    """The model to train: a saved pause-model folder, or a HF model (pretrained or random) + control tokens,
    its weights loaded in `dtype`."""
    import dataclasses

    from unfreeze.models.control.tokens import MARKER_FILE, ControlTokenLM

    tokens = [config.pause_token] if config.pause_token else []
    folder = Path(config.model).expanduser()
    if folder.is_dir() and (folder / MARKER_FILE).exists():
        if config.weights == "random" or config.model_config or config.tokenizer:
            raise UsageError(f"model {config.model} is a saved model folder; it brings its own weights and "
                             f"tokenizer (unset weights=random, model_config, tokenizer)")
        # A saved LoRA adapter is merged: this run trains from the weights that folder represents.
        model = ControlTokenLM.from_pretrained(str(folder), dtype=dtype, merge_adapter=True,
                                               pause_tokenization=config.pause_tokenization)
        if model.control_tokens and model.control_tokens != tokens:
            raise UsageError(f"model {config.model} has control tokens {model.control_tokens}; "
                             f"set pause_token to {model.control_tokens[0]!r}")
        if not model.control_tokens and tokens:
            model = ControlTokenLM.from_base(model.base, model.tokenizer, tokens, config.detach_head,
                                             config.pause_tokenization)
        model.detach_head = config.detach_head
        said = f"model: {config.model} (saved folder; control tokens {model.control_tokens or 'none'})"
    else:
        source = model_source(config)
        tokenizer = source.load_tokenizer()
        if source.random:  # a random model is built for its tokenizer: same vocabulary size and special ids
            source = dataclasses.replace(source, overrides={
                "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, **source.overrides})
        base = source.load("causal_lm", dtype=dtype)
        model = ControlTokenLM.from_base(base, tokenizer, tokens, config.detach_head, config.pause_tokenization)
        said = f"model: {config.model} ({config.weights} weights); control tokens {tokens or 'none'}"
    if config.attn_implementation != "auto":  # auto: transformers' own choice (SDPA where the model has it)
        from unfreeze.models.structure import attention_implementation

        hf = model.hf_model
        hf.set_attn_implementation(attention_implementation(hf.config, config.attn_implementation))
    adapter = next((term for term in choice_terms(config) if term.lora), None)
    if config.lora or adapter is not None:
        targets = [t.strip() for t in config.lora_target_modules.split(",")] if config.lora_target_modules else None
        model.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout, targets,
                       adapter_blocks(model, adapter))
    log.info(said)  # once the model is whole: a refused LoRA rank is then the only line said
    return model.train()


def choice_terms(config: SFTConfig) -> list:
    """The words of `trainable_layers` (none when unset)."""
    from unfreeze.models.choice import parse_choice

    return parse_choice(config.trainable_layers, "trainable_layers") if config.trainable_layers else []


def adapter_blocks(model: Any, adapter: Any) -> list[int] | None:
    """The blocks a `lora:BLOCKS` word puts the adapter on (None: every block the targets are in)."""
    if adapter is None or adapter.blocks is None:
        return None
    from unfreeze.models.trainable import model_parts

    return adapter.blocks.indices(len(model_parts(model).structure.blocks), "trainable_layers", adapter.text)


def check_choice(config: SFTConfig, model_config: Any = None) -> None:
    """What the words of `trainable_layers` name exists in the model (`model_config()` built on the meta device:
    nothing is allocated); the pause words need a pause token, sft's LoRA is peft's (no lora_alternative)."""
    import torch
    from transformers import AutoModelForCausalLM

    from unfreeze.models.trainable import check_choice as check_on

    terms = choice_terms(config)
    kinds = {term.kind for term in terms}
    if "lora_alternative" in kinds:
        raise UsageError("trainable_layers lora_alternative: sft's LoRA is peft's; use lora or lora:BLOCKS")
    if not config.pause_token and kinds & {"new_tokens", "pause_head"}:
        raise UsageError(f"trainable_layers {config.trainable_layers}: new_tokens and pause_head need a control "
                         "token, but pause_token is null")
    if model_config is None or not kinds & {"blocks", "attention", "mlp", "lora", "bias", "norms"}:
        return
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config())
    except Exception as err:  # noqa: BLE001 - an architecture transformers cannot build: the load says it later
        raise UsageError(f"model {config.model}: cannot build it as a causal LM ({type(err).__name__})") from None
    check_on(model, terms, "trainable_layers")


def trainable_model(config: SFTConfig, log: Any, precision: Any) -> tuple[Any, Any]:
    """The model with exactly the configured components and words trainable, and the summary of what trains.

    The weights load in `precision.weights`; with `precision.cast_everything` LoRA (which peft makes fp32)
    and the new control-token tensors take that dtype too -- pure bf16 training.
    """
    # apply_components: the switched-on components -> their parameters -> requires_grad, with the summary
    from unfreeze.models.trainable import apply_components as set_trainable

    model = build_model(config, log, precision.weights)
    if precision.cast_everything:
        model.to(precision.weights)
    positions = getattr(model.config, "n_positions", None)  # GPT-2's learned positions are a hard limit
    if positions is not None and config.max_length > positions:
        raise UsageError(f"max_length={config.max_length} exceeds the model's {positions} positions")
    if config.dropout is not None:
        from unfreeze.models.dropout import set_dropout

        set_dropout(model.hf_model, config.dropout)
    if config.trainable_layers or config.cache_activations != "off":
        from contextlib import suppress

        with suppress(UsageError):  # the LM's stages, traced once (an LM whose blocks cannot be read has none)
            model.staged_forward()
    components = [name for name, key in COMPONENT_SWITCHES.items() if getattr(config, key)]
    trainable = set_trainable(model, components, config.trainable_layers)
    for line in trainable.lines():
        log.info(line)
    if config.gradient_checkpointing:
        from unfreeze.models.model_config import enable_activation_checkpointing

        enable_activation_checkpointing(model.hf_model)
    return model, trainable


@dataclass
class SFTData:
    """The encoded training and validation examples (and the test file beside the training file, if any)."""

    train: Any  # sft_data.EncodedSet
    val: Any
    test_file: Path | None


def read_data(config: SFTConfig, log: Any) -> tuple[list[dict], Path, Path | None]:
    """The checked rows (cut to `train_limit`), the training file and the test file beside it, if any.

    Called before the model is loaded, so a wrong column or template costs no model load."""
    from unfreeze.data import sft_data

    train_file, test_file = sft_data.data_files(config.data)
    sft_data.check_template(config.prompt_template)
    rows = sft_data.read_rows(train_file, completion_column(config), config.prompt_column)
    if config.train_limit is not None:
        rows = rows[: config.train_limit]
    _check_pauses(config, rows, train_file, log)
    return rows, train_file, test_file


def load_data(config: SFTConfig, model: Any, log: Any, read: tuple | None = None) -> SFTData:
    """Read (unless `read` is `read_data`'s result), split (seeded) and encode; warn about cut examples."""
    from unfreeze.data import sft_data

    rows, train_file, test_file = read or read_data(config, log)
    template = config.prompt_template
    train_rows, val_rows = sft_data.split_train_val(rows, config.val_fraction, config.seed)
    train_set = sft_data.encode_rows(model.tokenizer, train_rows, config.max_length, model.control_tokens,
                                     model.pause_tokenization, template)
    val_set = sft_data.encode_rows(model.tokenizer, val_rows, config.max_length, model.control_tokens,
                                   model.pause_tokenization, template)
    for name, encoded, n_rows in (("train", train_set, len(train_rows)), ("validation", val_set, len(val_rows))):
        if encoded.n_truncated:
            dropped = f"; {encoded.n_dropped} lost every answer token and were dropped" if encoded.n_dropped else ""
            log.warning(f"warning: {encoded.n_truncated} of {n_rows} {name} examples are longer than "
                        f"max_length={config.max_length} tokens and were cut{dropped}")
    if not train_set.examples or not val_set.examples:
        raise UsageError(f"no training or validation examples left (max_length={config.max_length} too small?)")
    log.info(f"data: {train_file} -> {len(train_set.examples)} train / {len(val_set.examples)} validation examples")
    return SFTData(train=train_set, val=val_set, test_file=test_file)


def completion_column(config: SFTConfig) -> str:
    """The completion column: `completion_column`, else the older key `answer_field` (both: the same name)."""
    if config.completion_column is None:
        return config.answer_field
    if config.answer_field not in ("answer", config.completion_column):
        raise UsageError(f"completion_column={config.completion_column!r} and answer_field={config.answer_field!r} "
                         f"name different columns; set only completion_column")
    return config.completion_column


def _check_pauses(config: SFTConfig, rows: list[dict], train_file: Path, log: Any) -> None:
    from unfreeze.data.sft_data import count_containing

    if config.pause_token:
        if count_containing(rows, config.pause_token) == 0:
            log.warning(f"warning: no {completion_column(config)!r} in {train_file} contains {config.pause_token!r}; "
                        f"the pause head will only learn never to pause (pause data: `unfreeze inject-pauses "
                        f"--pause_token '{config.pause_token}'`; its answers may be in answer_field="
                        f"pause_augmented_answer)")
    elif count_containing(rows, "<|pause|>"):
        log.warning(f"warning: {train_file} contains '<|pause|>' but pause_token is null: it is trained as "
                    f"plain text")
