"""Cheap signals, each measured for its worth by the benchmark (rank correlation with the sweep).

* `probe_accuracies`: a logistic-regression probe per block boundary on the cached pooled features,
  scored on validation: where in the network the information is.
* `relative_gradient_norms`: Auto-RGN (Lee et al. 2023, "Surgical Fine-Tuning"): per stage, the norm
  of the loss gradient over the norm of the weights, from a few batches with everything trainable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              classes: int, iterations: int = 60, weight_decay: float = 1e-3) -> float:
    """Validation accuracy of a standardised, L2-regularised logistic regression (full-batch L-BFGS)."""
    train_x, val_x = train_x.double(), val_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    weight = torch.zeros(train_x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((val_x @ weight + bias).argmax(-1) == val_y).double().mean())


def probe_accuracies(cache, labels: dict, num_boundaries: int) -> list[float]:
    """Probe validation accuracy at boundaries 1 .. num_boundaries (index 0 = boundary 1)."""
    train_y, val_y = torch.tensor(labels["train"]), torch.tensor(labels["validation"])
    classes = int(max(train_y.max(), val_y.max())) + 1
    return [round(fit_probe(cache.pooled("train", b).float(), train_y, cache.pooled("validation", b).float(),
                            val_y, classes), 4) for b in range(1, num_boundaries + 1)]


def relative_gradient_norms(model, forward_batches) -> list[float]:
    """Per stage (and the head, last): ||grad|| / ||weights|| of the stage's parameters, from the summed loss of `forward_batches`
    (callables returning a loss, run with every parameter trainable); `requires_grad` is restored after."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        for loss_of_batch in forward_batches:
            loss_of_batch().backward()
        norms = []
        for modules in [*model.stage_modules(), [model.head]]:
            stage = list({id(p): p for m in modules for p in m.parameters()}.values())
            grad = sum(float(p.grad.double().pow(2).sum()) for p in stage if p.grad is not None) ** 0.5
            weight = sum(float(p.detach().double().pow(2).sum()) for p in stage) ** 0.5
            norms.append(grad / weight if weight > 0 else 0.0)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
    return norms


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var > 0 else float("nan")
