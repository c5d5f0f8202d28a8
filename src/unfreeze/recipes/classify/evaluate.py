"""The final evaluation of `unfreeze classify`: predictions of every split, scored by `unfreeze.scoring`."""

from __future__ import annotations

from unfreeze import scoring
from unfreeze.training.loop import SPLITS


def evaluate(loop, class_names) -> tuple[dict, dict]:
    """`scoring.split_scores` of every split (accuracy, macro-F1, confusion matrix, per-class table), from a
    whole loader pass of the trained loop (`ClassifierTraining.predictions`); and the (true, predicted)
    classes behind them, per split (validation and test in example order: their loaders do not shuffle)."""
    predicted = {name: loop.predictions(name, desc=f"evaluating ({name})") for name in SPLITS}
    return {name: scoring.split_scores(*predicted[name], class_names) for name in SPLITS}, predicted


def prediction_rows(splits, predicted: dict, class_names) -> list[dict]:
    """One record per validation and test example: its text, its class and the run's prediction (the file the
    report links as the run's predictions)."""
    rows = []
    for split, frame in (("validation", splits.validation), ("test", splits.test)):
        true, guess = predicted[split]
        for index, (text, label, prediction) in enumerate(zip(frame["Text"], true, guess)):
            rows.append({"split": split, "index": index, "text": str(text), "label": str(class_names[label]),
                         "predicted": str(class_names[prediction]), "correct": label == prediction})
    return rows


def score_metrics(scores: dict, class_names) -> dict:
    """What metrics.json holds beyond accuracy: macro-F1 per split, the classes, confusion matrices, per class."""
    return {"train_f1": scores["train"]["f1"], "val_f1": scores["validation"]["f1"], "test_f1": scores["test"]["f1"],
            "class_names": list(class_names), "confusion": {name: scores[name]["confusion"] for name in SPLITS},
            "per_class": {name: scores[name]["per_class"] for name in SPLITS}}


def score_lines(scores: dict, class_names, split: str = "test") -> str:
    """The per-class table and confusion matrix printed at the end of a run."""
    return "\n".join(scoring.report_lines(scores[split], class_names, split))
