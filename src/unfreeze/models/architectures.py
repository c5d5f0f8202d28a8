"""Which transformers architectures `unfreeze classify` runs: tiny random models of every causal-LM architecture.

Every model type in the installed transformers' causal-LM auto-mapping is tried: a small config (width 32,
3 layers, vocabulary 128, windows and chunks of 4 tokens, 4 experts) is built, and the decoder-only text
ones go through what classify does to a model (`DecoderClassifier` and `check_staged_forward`). Each type
ends in one of four rows: supported, refused (classify's one-line reason), not a decoder-only text model
(encoder-decoder, or text inside a multimodal model), or not buildable from a small config (transformers'
own error). tests/test_arch_breadth.py asserts the supported ones end to end, and that this survey and
docs/architectures.md agree.

    python -m unfreeze.models.architectures            # writes docs/architectures.md
    python -m unfreeze.models.architectures --check    # exit 1 if docs/architectures.md is stale
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from unfreeze.errors import UsageError

WIDTH, LAYERS, HEADS, VOCAB, WINDOW = 32, 3, 4, 128, 4
PAD = 0  # the tiny models' pad token (the breadth test pads with it)
MAX_PARAMETERS = 10_000_000  # builds in well under a second; most tiny models have ~50k (one small config: 96M)
# Config fields (or their aliases through a config's attribute_map) set on every tiny model that has them.
TINY = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=2, intermediate_size=48, ffn_hidden_size=48, n_inner=48,
            max_position_embeddings=64, sliding_window=WINDOW, local_attention=2 * WINDOW, attention_chunk_size=WINDOW,
            attention_window_size=WINDOW, rotary_dim=4, num_experts=4, num_local_experts=4, n_routed_experts=4,
            moe_num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
            kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
            n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
            moe_shared_expert_intermediate_size=16, linear_head_dim=8, linear_num_heads=4,
            mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8,
            mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=8, state_size=8, chunk_size=8,
            vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
            pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
SUPPORTED, REFUSED, NOT_DECODER, NOT_BUILT = "supported", "refused", "not a decoder-only text model", "not built"
DOC = Path(__file__).resolve().parents[3] / "docs" / "architectures.md"


@dataclass
class Row:
    model_type: str
    status: str
    reason: str = ""  # empty for supported types
    model_class: str = ""


class NotApplicable(Exception):
    """This model type is not a decoder-only text model, or transformers cannot build it small."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:140]}" if text else type(err).__name__


def _fields(config_class) -> set[str]:
    return set(getattr(config_class, "__dataclass_fields__", {}))


def _tiny_kwargs(config_class, default) -> dict:
    names, aliases = _fields(config_class), getattr(config_class, "attribute_map", {})
    kwargs = {}
    for key, value in TINY.items():
        target = key if key in names else aliases.get(key)
        if target in names:
            kwargs[target] = value
    if "qk_rope_head_dim" in names:  # multi-head latent attention: its own head sizes, one key/value per head
        kwargs["num_key_value_heads"] = HEADS
    elif "head_dim" in names:
        kwargs["head_dim"] = WIDTH // HEADS
    kinds = getattr(default, "layer_types", None)
    if "layer_types" in names and kinds:  # every attention type the architecture has, in a 3-layer model
        order = list(dict.fromkeys(kinds))
        kwargs["layer_types"] = [order[i % len(order)] for i in range(LAYERS)]
    for name in getattr(config_class, "sub_configs", {}):  # MPT's attn_config, DBRX's ffn_config
        sub_class = config_class.sub_configs[name]
        sub = {k: v for k, v in _tiny_kwargs(sub_class, sub_class()).items() if k not in ("pad_token_id",)}
        if sub:
            kwargs[name] = sub
    return kwargs


def tiny_config(model_type: str):
    """A small config of `model_type` with SDPA or eager attention, or NotApplicable saying why not."""
    from transformers import CONFIG_MAPPING, AutoModel

    from unfreeze.models.model_config import without_dropout
    from unfreeze.models.structure import attention_implementation

    config_class = CONFIG_MAPPING[model_type]
    try:
        default = config_class()
    except Exception as err:  # noqa: BLE001 - transformers' own error, reported as the reason
        raise NotApplicable(NOT_BUILT, f"default config: {_one_line(err)}") from None
    if getattr(default, "is_encoder_decoder", False):
        raise NotApplicable(NOT_DECODER, "an encoder-decoder model")
    if config_class not in AutoModel._model_mapping:
        raise NotApplicable(NOT_BUILT, "AutoModel maps no base model to its config")
    if default.get_text_config() is not default:
        raise NotApplicable(NOT_DECODER, "text inside a multimodal model (its text model is listed on its own "
                                         "where transformers maps one)")
    try:
        config = config_class(**_tiny_kwargs(config_class, default))
    except Exception as err:  # noqa: BLE001
        raise NotApplicable(NOT_BUILT, f"small config: {_one_line(err)}") from None
    without_dropout(config)
    config._attn_implementation = attention_implementation(config)
    return config


def build_body(model_type: str, seed: int = 0):
    """A tiny random base model of `model_type` (NotApplicable where transformers cannot build or run it)."""
    from transformers import AutoModel

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    try:
        with torch.device("meta"):  # sizes this survey does not set can leave a large model: not built, quickly
            size = sum(p.numel() for p in AutoModel.from_config(config).parameters())
        if size > MAX_PARAMETERS:
            raise NotApplicable(NOT_BUILT, f"the small config still has {size / 1e6:.0f}M parameters (sizes the "
                                           "survey does not know how to shrink)")
        body = AutoModel.from_config(config).eval()
        ids = torch.arange(3, 3 + 2 * WINDOW + 4)[None] % VOCAB
        with torch.no_grad():
            body(input_ids=ids, attention_mask=torch.ones_like(ids))  # transformers' own forward must run first
    except NotApplicable:
        raise
    except Exception as err:  # noqa: BLE001
        raise NotApplicable(NOT_BUILT, f"{_one_line(err)}") from None
    return body


def classifier(body, num_classes: int = 3, **options):
    """What classify builds on a base model (a UsageError where it refuses the architecture)."""
    from unfreeze.models.classifier import DecoderClassifier
    from unfreeze.models.structure import check_staged_forward

    torch.manual_seed(1)
    model = DecoderClassifier(body, num_classes=num_classes, pad_token_id=PAD, reference_padding=False, **options)
    check_staged_forward(model._staged, PAD, model.structure.token_embedding.weight.shape[0], causal=model.causal)
    return model.eval()


@contextlib.contextmanager
def quiet():
    """transformers' warnings about random tiny configs are not what the survey reports."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(previous)


def survey_one(model_type: str) -> Row:
    with quiet():
        try:
            body = build_body(model_type)
        except NotApplicable as err:
            return Row(model_type, err.status, err.reason)
        try:
            classifier(body)
        except UsageError as err:
            return Row(model_type, REFUSED, str(err).removeprefix("--model: "), type(body).__name__)
    return Row(model_type, SUPPORTED, "", type(body).__name__)


def survey(model_types: list[str] | None = None) -> list[Row]:
    return [survey_one(t) for t in (model_types or causal_lm_types())]


INTRO = ("Generated by `python -m unfreeze.models.architectures` from transformers {version}: a tiny random model "
         "(width 32, 3 layers, sliding windows and attention chunks of 4 tokens) of every model type in transformers' "
         "causal-LM auto-mapping goes through what classify does to a model; `tests/test_arch_breadth.py` asserts "
         "each supported one end to end (the stages equal the model's own forward on a padded batch longer than its "
         "window; cached equals uncached; the presets' counts; an example alone equals the same example in a padded "
         "batch) and that this page is current.")


def render(rows: list[Row]) -> str:
    import transformers

    def table(status: str, with_reason: bool) -> list[str]:
        chosen = [r for r in rows if r.status == status]
        head = (["| model type | base model | reason |", "|---|---|---|"] if with_reason
                else ["| model type | base model |", "|---|---|"])
        body = [f"| `{r.model_type}` | {r.model_class or '-'} |" + (f" {r.reason.replace('|', '/')} |" if with_reason
                                                                      else "") for r in chosen]
        return [*head, *body] if chosen else ["(none)"]

    counts = {s: sum(r.status == s for r in rows) for s in (SUPPORTED, REFUSED, NOT_DECODER, NOT_BUILT)}
    summary = (f"{counts[SUPPORTED]} supported, {counts[REFUSED]} refused, {counts[NOT_DECODER]} not decoder-only "
               f"text models, {counts[NOT_BUILT]} not buildable from a small config.")
    return "\n".join([
        "# Architectures `unfreeze classify` runs", "", INTRO.format(version=transformers.__version__), "", summary, "",
        f"## Supported ({counts[SUPPORTED]})", "", *table(SUPPORTED, False), "",
        f"## Refused, with classify's reason ({counts[REFUSED]})", "", *table(REFUSED, True), "",
        f"## Not decoder-only text models ({counts[NOT_DECODER]})", "", *table(NOT_DECODER, True), "",
        f"## Not buildable from a small config ({counts[NOT_BUILT]})", "",
        "transformers' own error on the small config; a real checkpoint of these may still run.", "",
        *table(NOT_BUILT, True), ""])


SECTIONS = {"## Supported": SUPPORTED, "## Refused": REFUSED, "## Not decoder-only": NOT_DECODER,
            "## Not buildable": NOT_BUILT}


def read_doc(text: str) -> dict[str, Row]:
    """The rows of a page `render` wrote, by model type."""
    rows, status = {}, None
    for line in text.splitlines():
        status = next((value for head, value in SECTIONS.items() if line.startswith(head)), status)
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            model_type = cells[0].strip("`")
            rows[model_type] = Row(model_type, status, cells[2] if len(cells) > 2 else "", cells[1].strip("-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from a fresh survey")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = render(survey())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        stale = f"{args.out} is stale: rerun python -m unfreeze.models.architectures"
        print("up to date" if current == text else stale)
        return 0 if current == text else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
