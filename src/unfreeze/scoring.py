"""Classification scores from (true, predicted) class indices: pure functions, no torch.

Everything derives from the confusion matrix, rows = true class, columns = predicted class. Accuracy is
its trace over its sum (the same float as correct/seen). Per class: precision = TP / predicted,
recall = TP / true, F1 = 2PR / (P + R), each 0 when its denominator is 0. Macro-F1 is the unweighted
mean of F1 over the classes that occur in the split as a true or a predicted label, which is what
scikit-learn's `f1_score(average="macro")` does when it is not given the label list: a class absent
from a split neither helps nor hurts that split's score.
"""

from __future__ import annotations

from collections.abc import Sequence


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """counts[t][p] = how many examples of true class t were predicted as p."""
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    counts = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted):
        counts[int(t)][int(p)] += 1
    return counts


def accuracy(confusion: Sequence[Sequence[int]]) -> float:
    total = sum(map(sum, confusion))
    return sum(confusion[i][i] for i in range(len(confusion))) / total if total else float("nan")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def per_class(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> list[dict]:
    """One dict per class: name, precision, recall, f1, support (true count), predicted (count)."""
    rows = []
    for i, name in enumerate(class_names):
        hits = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        f1 = _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0
        rows.append({"class": str(name), "precision": precision, "recall": recall, "f1": f1,
                     "support": support, "predicted": predicted})
    return rows


def macro_f1(confusion: Sequence[Sequence[int]]) -> float:
    """Mean F1 over the classes present (as truth or prediction); nan for an empty split."""
    rows = per_class(confusion, [str(i) for i in range(len(confusion))])
    present = [row["f1"] for row in rows if row["support"] or row["predicted"]]
    return sum(present) / len(present) if present else float("nan")


def split_scores(true: Sequence[int], predicted: Sequence[int], class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, the confusion matrix and the per-class table of one split."""
    confusion = confusion_matrix(true, predicted, len(class_names))
    return {"acc": accuracy(confusion), "f1": macro_f1(confusion), "confusion": confusion,
            "per_class": per_class(confusion, class_names)}


def report_lines(scores: dict, class_names: Sequence[str], split: str) -> list[str]:
    """A per-class table and the confusion matrix of one split, as text lines for the log."""
    width = max(8, *(len(str(n)) for n in class_names))
    lines = [f"{split}: accuracy {scores['acc'] * 100:.2f}%, macro-F1 {scores['f1']:.4f}",
             f"  {'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for row in scores["per_class"]:
        lines.append(f"  {row['class']:<{width}} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
                     f"{row['support']:>8d}")
    cell = max(6, width, *(len(str(v)) for r in scores["confusion"] for v in r))
    lines.append("  confusion (rows true, columns predicted):")
    lines.append("  " + " " * width + "".join(f" {str(n)[:cell]:>{cell}}" for n in class_names))
    for name, row in zip(class_names, scores["confusion"]):
        lines.append(f"  {str(name):<{width}}" + "".join(f" {v:>{cell}d}" for v in row))
    return lines
