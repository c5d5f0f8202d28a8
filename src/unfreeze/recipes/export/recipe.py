"""`unfreeze export CHOICE --model M --to peft|axolotl|llamafactory|names [--out FILE]`.

    check the options -> the model's config (`models.loading.ModelSource`: hub id, folder, .gguf, random with
    overrides) -> the model built on the meta device (no weights) -> `unfreeze.select` -> the plan -> the
    form's text, to --out (atomically) or stdout; notes (what the form leaves out or changes) to stderr.

A choice the form cannot hold is one UsageError line naming why (exit 2), and nothing is written.
"""

from __future__ import annotations

import sys

from unfreeze.errors import UsageError, require
from unfreeze.files import atomic_write_text, check_output_path
from unfreeze.recipes.export.config import ExportConfig


def model_source(cfg: ExportConfig):
    from unfreeze.models.loading import ModelSource
    from unfreeze.models.model_config import parse_model_config

    return ModelSource(cfg.model, "--model", cfg.weights, parse_model_config(cfg.model_config), "--model_config")


def meta_model(cfg: ExportConfig):
    """The model of --model and --head, on the meta device: its modules and names, no weights."""
    import torch
    import transformers

    config = model_source(cfg).config()
    auto = transformers.AutoModelForCausalLM if cfg.head == "causal_lm" else \
        transformers.AutoModelForSequenceClassification
    if cfg.head == "classifier":
        config.num_labels = cfg.num_labels
    try:
        with torch.device("meta"):
            return auto.from_config(config)
    except Exception as err:  # noqa: BLE001 - an architecture transformers cannot build with this head
        said = str(err).splitlines()[0][:160] if str(err) else ""
        raise UsageError(f"--model {cfg.model}: cannot build a {getattr(config, 'model_type', '?')} model with "
                         f"--head {cfg.head} ({type(err).__name__}: {said})") from None


def validate(cfg: ExportConfig) -> None:
    require(cfg.choice is not None, "no choice: give one, e.g. `unfreeze export last_block --model gpt2 --to axolotl`")
    require(cfg.model is not None and bool(str(cfg.model).strip()),
            "--model is missing: a hub id, a folder or a .gguf file")
    require(cfg.lora_rank >= 1, f"--lora_rank must be at least 1 (got {cfg.lora_rank})")
    require(cfg.num_labels >= 1, f"--num_labels must be at least 1 (got {cfg.num_labels})")
    if cfg.out is not None:
        check_output_path(cfg.out, "--out", kind="file")
    from unfreeze.models.gguf import is_gguf, split_source
    from unfreeze.models.loading import check_model_folder

    source = model_source(cfg)
    if is_gguf(source.name):
        split_source(source.name, "--model")
    else:  # a folder needs its config.json only: nothing is loaded but the architecture
        check_model_folder(source.location, "--model", weights=False)
    require(not source.overrides or source.random, "--model_config overrides the architecture: use it with --weights "
                                                   "random (a pretrained model's architecture is fixed)")


def plan(cfg: ExportConfig):
    """The plan of --choice on --model (the model built on the meta device)."""
    from unfreeze.export.select import select

    model = meta_model(cfg)
    chosen = select(model, cfg.choice, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_layout=cfg.lora_layout)
    result = chosen.plan()
    result.base_model = cfg.model
    return result


def run(cfg: ExportConfig) -> dict:
    """Write the export; returns {"text", "out", "notes"}."""
    from unfreeze.export import formats

    validate(cfg)
    result = plan(cfg)
    text = formats.render(result, cfg.to)  # a form that cannot hold the choice stops here: nothing written
    notes = formats.notes(result, cfg.to)
    for note in notes:
        print(note, file=sys.stderr)
    if cfg.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(cfg.out, text)
        print(f"written: {cfg.out}", file=sys.stderr)
    return {"text": text, "out": cfg.out, "notes": notes}
