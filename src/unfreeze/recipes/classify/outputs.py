"""What a finished classify run leaves beside its metrics: `<out>/final/` (the trained classifier as plain
transformers loads it, with its model card) and, with `--export DIR`, the choice in other stacks' forms."""

from __future__ import annotations

from pathlib import Path

from unfreeze.recipes.classify.config import ClassifyConfig


def export_plan(cfg: ClassifyConfig, config, num_labels: int):
    """The run's choice on the architecture's own sequence classifier (built on the meta device)."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from unfreeze.export.select import select

    config = copy.deepcopy(config)
    config.num_labels = num_labels
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    plan = select(model, cfg.trainable_layers, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                  lora_layout=cfg.lora_layout, with_output=True).plan()  # classify's head trains under any choice
    plan.base_model = cfg.model or cfg.model_size
    return plan


def card(cfg: ClassifyConfig, inputs, summary, metrics: dict, notes: list[str]) -> str:
    from unfreeze.export.card import command_line, model_card

    labels = ", ".join(str(c) for c in inputs.splits.class_names)
    loading = ("from transformers import pipeline\n"
               f"classify = pipeline(\"text-classification\", model=\"{Path(cfg.out) / 'final'}\")\n"
               f"classify(\"some text\")  # labels: {labels}")
    return model_card(task="text classification", base_model=inputs.source.name, weights=cfg.weights,
                      data=str(inputs.splits.source), summary=summary.lines(),
                      command=command_line("classify", cfg), metrics=metrics, loading=loading, notes=notes,
                      out=cfg.out, pipeline_tag="text-classification")


def save_outputs(cfg: ClassifyConfig, inputs, model, summary, metrics: dict, log) -> dict:
    """final/ (unless --save_model false or no --out) and --export DIR; returns the entries for metrics.json."""
    from unfreeze.export import classifier_folder, formats

    saved: dict = {}
    if cfg.export is not None:
        record = formats.write_all(export_plan(cfg, inputs.config, len(inputs.splits.class_names)), Path(cfg.export))
        log.info(f"exported {cfg.trainable_layers} to {cfg.export}: {', '.join(record['written'].values())}")
        saved["export"] = {"dir": str(cfg.export), **record}
    if cfg.save_model and cfg.out is not None:
        agreement, notes = classifier_folder.pooling_agreement(model)
        tokenizer = inputs.source.load_tokenizer()
        notes += classifier_folder.tokenizer_note(tokenizer)
        text = card(cfg, inputs, summary, metrics, notes)
        saved["final"] = classifier_folder.save_classifier(
            model, Path(cfg.out) / "final", class_names=[str(c) for c in inputs.splits.class_names],
            tokenizer=tokenizer, card=text, base_model=inputs.source.location, pretrained=not inputs.source.random)
        saved["final"]["transformers_pooling_agrees"] = agreement
        log.info(f"saved the classifier to {saved['final']['path']} (AutoModelForSequenceClassification)")
    return saved
