"""The final evaluation of `unfreeze classify`: predictions of every split, scored by `unfreeze.scoring`."""

from __future__ import annotations

from unfreeze import scoring
from unfreeze.training.loop import SPLITS


def evaluate(loop, class_names) -> dict:
    """`scoring.split_scores` of every split (accuracy, macro-F1, confusion matrix, per-class table), from a
    whole loader pass of the trained loop (`ClassifierTraining.predictions`)."""
    return {name: scoring.split_scores(*loop.predictions(name, desc=f"evaluating ({name})"), class_names)
            for name in SPLITS}


def score_metrics(scores: dict, class_names) -> dict:
    """What metrics.json holds beyond accuracy: macro-F1 per split, the classes, confusion matrices, per class."""
    return {"train_f1": scores["train"]["f1"], "val_f1": scores["validation"]["f1"], "test_f1": scores["test"]["f1"],
            "class_names": list(class_names), "confusion": {name: scores[name]["confusion"] for name in SPLITS},
            "per_class": {name: scores[name]["per_class"] for name in SPLITS}}


def score_lines(scores: dict, class_names, split: str = "test") -> str:
    """The per-class table and confusion matrix printed at the end of a run."""
    return "\n".join(scoring.report_lines(scores[split], class_names, split))
