"""DIST: Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022).

Instead of KL's exact match, the student matches the teacher's class *relations*: with ``y = softmax(z / tau)``,

* inter-class: ``1 - mean_i pearson(y_s[i, :], y_t[i, :])`` — per sample, across the classes;
* intra-class: ``1 - mean_c pearson(y_s[:, c], y_t[:, c])`` — per class, across the batch;

``loss = tau^2 * (beta * inter + gamma * intra)``. The Pearson correlation is the authors' cosine of the centred
vectors, ``<a, b> / (||a|| ||b|| + 1e-8)`` (hunto/image_classification_sota lib/models/losses/dist_kd.py).

Defaults are the published CIFAR-100 recipe, configs/strategies/distill/dist_cifar.yaml of that repository:
``kd: dist_t4`` = DIST(beta 1, gamma 1, tau 4), ``ori_loss_weight`` (CE) 1, ``kd_loss_weight`` 2, no warm-up.

The intra-class relation needs at least two samples. Under data parallelism it is computed over each process's
share of the batch, as in the authors' data-parallel training code, not over the global batch.
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

#: Added to the product of norms in the Pearson denominator (the authors' ``eps``).
PEARSON_EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(N, K), (N, K) -> (N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, gamma: float,
              tau: float) -> torch.Tensor:
    """``tau^2 * (beta * inter + gamma * intra)`` on ``softmax(z / tau)`` (fp32); the batch needs >= 2 samples."""
    y_s = F.softmax(student_logits.float() / tau, dim=1)
    y_t = F.softmax(teacher_logits.float() / tau, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


@register("dist", "Huang et al. 2022: CE + inter- and intra-class relations of the logits (Pearson correlation)")
class DIST(Distiller):
    """Cross-entropy plus ``kd_weight`` times the DIST relation loss on the logits."""

    min_batch_size = 2
    min_batch_reason = ("its intra-class relation is a Pearson correlation across the batch, undefined for a "
                        "single sample")

    @dataclasses.dataclass
    class Params(DistillParams):
        # Huang et al. 2022, dist_cifar.yaml: ori_loss_weight 1, kd_loss_weight 2, kd dist_t4 (beta 1, gamma 1, tau 4).
        ce_weight: float = 1.0
        kd_weight: float = 2.0
        beta: float = 1.0  # inter-class relation weight
        gamma: float = 1.0  # intra-class relation weight
        tau: float = 4.0

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("kd_weight", self.kd_weight)
            check_non_negative("beta", self.beta)
            check_non_negative("gamma", self.gamma)
            check_temperature("tau", self.tau)

    params: Params

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.check_batch(x)
        logits, _ = self.student_model(x)
        t_logits, _ = self.teacher_forward(x)
        p = self.params
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "dist": weighted(p.kd_weight, dist_loss(logits, t_logits, p.beta, p.gamma, p.tau)),
        }
