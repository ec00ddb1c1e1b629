"""DKD: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation" (CVPR 2022).

KD's loss split into target-class KD (TCKD: the binary gt-vs-rest distribution) and non-target-class KD (NCKD:
the distribution over the other classes), weighted separately. Defaults are the paper's CIFAR-100 settings
(mdistiller configs/cifar100/dkd): alpha 1, beta 8, T 4, CE 1, loss ramped in linearly over 20 epochs.

``logit_stand`` standardises both logits first (Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024; ``standardise_logits`` in kd.py), as in mdistiller/distillers/DKD.py of
sunshangquan/logit-standardization-KD. Off by default; the authors' settings are configs/methods/dkd_ls.yaml.
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
    linear_warmup,
    register,
    weighted,
)
from lakd.distill.kd import standardise_logits

#: Subtracted from the ground-truth logit (after dividing by T) so NCKD's softmax ignores that class.
GT_SUPPRESSION = 1000.0


def _binary_log_probs(scaled: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` log of (p_gt, p_other = 1 - p_gt) from ``logits / T``.

    Same as ``log(cat(sum(p * gt_mask), sum(p * other_mask)))`` but via logsumexp, so a saturated softmax
    gives a finite log instead of ``log(0)``.
    """
    log_z = torch.logsumexp(scaled, dim=1)
    log_gt = torch.logsumexp(scaled.masked_fill(~gt_mask, float("-inf")), dim=1)
    log_other = torch.logsumexp(scaled.masked_fill(gt_mask, float("-inf")), dim=1)
    return torch.stack([log_gt - log_z, log_other - log_z], dim=1)


def dkd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor, alpha: float, beta: float,
             temperature: float) -> torch.Tensor:
    """``alpha * TCKD + beta * NCKD``, each ``T^2 * KL(teacher || student)`` summed and divided by the batch."""
    s = logits_s.float() / temperature
    t = logits_t.float() / temperature
    batch = s.shape[0]
    gt_mask = F.one_hot(target, s.shape[1]).bool()
    tckd = F.kl_div(_binary_log_probs(s, gt_mask), _binary_log_probs(t, gt_mask), reduction="sum",
                    log_target=True) / batch
    suppress = GT_SUPPRESSION * gt_mask.float()
    nckd = F.kl_div(F.log_softmax(s - suppress, dim=1), F.log_softmax(t - suppress, dim=1), reduction="sum",
                    log_target=True) / batch
    return (alpha * tckd + beta * nckd) * temperature**2


@register("dkd", "Zhao et al. 2022: CE + decoupled KD (target and non-target class KL, warmed up)")
class DKD(Distiller):
    """Cross-entropy plus the warmed-up decoupled KD loss."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Zhao et al. 2022, CIFAR-100 (mdistiller configs/cifar100/dkd/*): alpha 1, beta 8, T 4, warm-up 20, CE 1.
        alpha: float = 1.0
        beta: float = 8.0
        temperature: float = 4.0
        warmup_epochs: float = 20.0
        # Sun et al. 2024: standardise both logits before the loss (off: plain DKD). See configs/methods/dkd_ls.yaml.
        logit_stand: bool = False

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("alpha", self.alpha)
            check_non_negative("beta", self.beta)
            check_temperature("temperature", self.temperature)
            check_non_negative("warmup_epochs", self.warmup_epochs)

    params: Params

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.student_model(x)
        t_logits, _ = self.teacher_forward(x)
        p = self.params
        ramp = linear_warmup(self.epochs_done(progress), p.warmup_epochs)
        s_kd, t_kd = (standardise_logits(logits), standardise_logits(t_logits)) if p.logit_stand else (logits, t_logits)
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "dkd": weighted(ramp, dkd_loss(s_kd, t_kd, y, p.alpha, p.beta, p.temperature)),
        }
