"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS DL Workshop 2015).

The student matches the teacher's temperature-softened class distribution. Defaults are mdistiller's CIFAR-100
settings (ce_weight 0.1, kd_weight 0.9, T 4), the ones the CRD/DKD benchmark tables use for KD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from lakd.distill.base import Distiller, DistillParams, check_non_negative, check_positive, register, weighted


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged over the batch.

    The ``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al., Sec. 2). Computed in fp32.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) / student_logits.shape[0]
    return kl * temperature**2


@register("kd")
class KD(Distiller):
    """Cross-entropy on labels plus the softened-logit KL to the teacher."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # mdistiller configs/cifar100/kd.yaml (Hinton et al. 2015): CE 0.1, KD 0.9, T 4.
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        temperature: float = 4.0

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("kd_weight", self.kd_weight)
            check_positive("temperature", self.temperature)

    params: Params

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, epoch: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.student_model(x)
        t_logits, _ = self.teacher_forward(x)
        p = self.params
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "kd": weighted(p.kd_weight, kd_loss(logits, t_logits, p.temperature)),
        }
