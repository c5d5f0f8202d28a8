"""`--to names`: the trainable parameters, one name per line, as the model names them (a tied tensor once)."""

from __future__ import annotations

from unfreeze.export.plan import TrainPlan


def render(plan: TrainPlan) -> str:
    return "".join(f"{name}\n" for name in plan.names)
