"""Learning-rate schedules as pure functions of training progress (in epochs, fractional).

Being stateless, the schedule needs nothing saved for resume: the LR of a step follows from its position.
"""

from __future__ import annotations

import math


def lr_at(
    epoch: float,
    base_lr: float,
    total_epochs: int,
    name: str = "cosine",
    warmup_epochs: float = 0.0,
    milestones: list[float] | None = None,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """LR at fractional ``epoch`` in [0, total_epochs): linear warm-up, then cosine / step / constant."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (epoch + 1e-3) / warmup_epochs
    if name == "cosine":
        span = max(total_epochs - warmup_epochs, 1e-8)
        t = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "step":
        passed = sum(1 for m in milestones or [] if epoch >= m)
        return base_lr * gamma**passed
    if name == "constant":
        return base_lr
    raise ValueError(f"unknown schedule '{name}'")
