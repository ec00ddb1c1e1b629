"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS DL Workshop 2015).

The student matches the teacher's temperature-softened class distribution. Defaults are mdistiller's CIFAR-100
settings (ce_weight 0.1, kd_weight 0.9, T 4), the ones the CRD/DKD benchmark tables use for KD.

``logit_stand`` adds logit standardisation (Sun, Zhu, Ren, Wang & Chen, "Logit Standardization in Knowledge
Distillation", CVPR 2024): both logits are Z-scored per sample (``standardise_logits``) before dividing by ``T``;
CE still uses the raw logits. It is off by default; the authors' recipe when on (T 2, KD weight 9, CE 0.1 —
sunshangquan/logit-standardization-KD tools/train.py ``--base-temp 2 --kd-weight 9`` and mdistiller/engine/cfg.py)
is configs/methods/kd_ls.yaml.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from lakd.distill.base import (
    Distiller,
    DistillParams,
    check_non_negative,
    check_temperature,
    register,
    weighted,
)

#: Added to the standard deviation in ``standardise_logits`` (the authors' value).
STAND_EPS = 1e-7


def standardise_logits(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row: ``(z - mean(z)) / (1e-7 + std(z))`` over the classes, unbiased std, in fp32.

    Sun et al. 2024, ``normalize`` in mdistiller/distillers/KD.py and DKD.py of sunshangquan/logit-standardization-KD.
    The result does not depend on a per-sample shift or positive scale of the logits.
    """
    z = logits.float()
    return (z - z.mean(dim=-1, keepdim=True)) / (STAND_EPS + z.std(dim=-1, keepdim=True))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged over the batch.

    The ``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al., Sec. 2). Computed in fp32.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) / student_logits.shape[0]
    return kl * temperature**2


@register("kd", "Hinton et al. 2015: CE + KL to the teacher's softened logits (logit_stand: Sun et al. 2024)")
class KD(Distiller):
    """Cross-entropy on labels plus the softened-logit KL to the teacher."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # mdistiller configs/cifar100/kd.yaml (Hinton et al. 2015): CE 0.1, KD 0.9, T 4.
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        temperature: float = 4.0
        # Sun et al. 2024: standardise both logits before the KL (off: plain Hinton KD). See configs/methods/kd_ls.yaml.
        logit_stand: bool = False

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("kd_weight", self.kd_weight)
            check_temperature("temperature", self.temperature)

    params: Params

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.student_model(x)
        t_logits, _ = self.teacher_forward(x)
        p = self.params
        s_kd, t_kd = (standardise_logits(logits), standardise_logits(t_logits)) if p.logit_stand else (logits, t_logits)
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "kd": weighted(p.kd_weight, kd_loss(s_kd, t_kd, p.temperature)),
        }
