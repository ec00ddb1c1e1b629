"""Vanilla: the student trained with cross-entropy only — the no-distillation baseline, teacher ignored."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lakd.distill.base import Distiller, register, weighted


@register("vanilla", "the student alone: cross-entropy on labels, no teacher")
class Vanilla(Distiller):
    requires_teacher = False

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.student_model(x)
        return logits, {"ce": weighted(self.params.ce_weight, F.cross_entropy(logits.float(), y))}
