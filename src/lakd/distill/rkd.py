"""RKD: Park, Kim, Lu & Cho, "Relational Knowledge Distillation" (CVPR 2019).

The student matches the teacher's *relations* between samples of a batch — pairwise distances (normalised by
their mean) and triplet angles — on the globally pooled last-stage embedding, so the two embeddings may have
different widths. Defaults are the paper's / mdistiller's: distance 25, angle 50, ce_weight 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from lakd.distill.base import Distiller, DistillParams, check_non_negative, register, weighted


def pooled(feat: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C)`` global average pool, fp32."""
    return feat.float().mean(dim=(2, 3))


def _fp32(e: torch.Tensor) -> torch.autocast:
    """Autocast off: it would run the Gram matmuls below in bf16/fp16, and ``|a|^2 + |b|^2 - 2ab`` cancels badly."""
    return torch.autocast(e.device.type, enabled=False)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix with a zero diagonal; clamped before the sqrt so its gradient stays finite."""
    with _fp32(e):
        e = e.float()
        sq = e.pow(2).sum(1)
        d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * e @ e.t()).clamp(min=eps)
        off_diag = 1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype)
        return d2.sqrt() * off_diag


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    positive = d[d > 0]
    return d / positive.mean().clamp(min=1e-12)


def rkd_distance_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the mean-normalised distance matrices (RKD-D, Eq. 3-4)."""
    fs, ft = fs.float(), ft.float()
    if len(fs) < 2:
        return fs.sum() * 0.0
    with torch.no_grad():
        t = _normalised_distances(ft)
    return F.smooth_l1_loss(_normalised_distances(fs), t)


def triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """``cos`` of the angle at ``e_j`` between ``e_i - e_j`` and ``e_k - e_j`` for every ``(j, i, k)``, flattened.

    ``N^3`` values, as in the paper's implementation; triplets with ``i == j`` or ``k == j`` give 0.
    """
    with _fp32(e):
        diff = F.normalize(e.float().unsqueeze(0) - e.float().unsqueeze(1), p=2, dim=2)  # [j, i] = unit(e_i - e_j)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_angle_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the triplet-angle cosines (RKD-A, Eq. 5-6)."""
    fs, ft = fs.float(), ft.float()
    with torch.no_grad():
        t = triplet_cosines(ft)
    return F.smooth_l1_loss(triplet_cosines(fs), t)


@register("rkd", "Park et al. 2019: CE + distance- and angle-wise relations of pooled features")
class RKD(Distiller):
    """Cross-entropy plus ``distance_weight * RKD-D + angle_weight * RKD-A`` on pooled last-stage features."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Park et al. 2019 (lambda_D 25, lambda_A 50 = 2x lambda_D); mdistiller configs/cifar100/rkd.yaml.
        distance_weight: float = 25.0
        angle_weight: float = 50.0

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("distance_weight", self.distance_weight)
            check_non_negative("angle_weight", self.angle_weight)

    params: Params

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats_s = self.student_model(x)
        _, feats_t = self.teacher_forward(x)
        es, et = pooled(feats_s[-1]), pooled(feats_t[-1])
        p = self.params
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "rkd_distance": weighted(p.distance_weight, rkd_distance_loss(es, et)),
            "rkd_angle": weighted(p.angle_weight, rkd_angle_loss(es, et)),
        }
