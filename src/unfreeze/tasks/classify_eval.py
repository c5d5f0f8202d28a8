"""The final evaluation of `unfreeze classify`: predictions of every split, scored by `unfreeze.scoring`."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from unfreeze import scoring

SPLITS = ("train", "validation", "test")


@torch.inference_mode()  # the final pass: nothing after it backpropagates, so skip autograd's bookkeeping too
def predictions(forward, loader, split, device) -> tuple[list[int], list[int]]:
    """(true, predicted) class indices of every example of `split`, in loader order."""
    true, predicted = [], []
    for indices, labels in tqdm(loader, total=len(loader), desc=f"evaluating ({split})", leave=False):
        predicted += forward(split, indices).argmax(dim=-1).cpu().tolist()
        true += labels.tolist()
    return true, predicted


def evaluate(forward, loaders, device, class_names) -> dict:
    """`scoring.split_scores` of every split: accuracy, macro-F1, confusion matrix, per-class table."""
    return {name: scoring.split_scores(*predictions(forward, loaders[name], name, device), class_names)
            for name in SPLITS}


def score_metrics(scores: dict, class_names) -> dict:
    """What metrics.json holds beyond accuracy: macro-F1 per split, the classes, confusion matrices, per class."""
    return {"train_f1": scores["train"]["f1"], "val_f1": scores["validation"]["f1"], "test_f1": scores["test"]["f1"],
            "class_names": list(class_names), "confusion": {name: scores[name]["confusion"] for name in SPLITS},
            "per_class": {name: scores[name]["per_class"] for name in SPLITS}}


def score_lines(scores: dict, class_names, split: str = "test") -> str:
    """The per-class table and confusion matrix printed at the end of a run."""
    return "\n".join(scoring.report_lines(scores[split], class_names, split))
