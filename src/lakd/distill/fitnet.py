"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

A regressor maps the student's guided stage onto the teacher's hint stage and is trained with MSE. As in
mdistiller/CRD we train hint and classification jointly (not the paper's two-stage schedule), with their CIFAR
defaults: feat_weight 100, ce_weight 1, hint at the middle stage, a conv+BN+ReLU regressor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lakd.distill.base import Distiller, DistillParams, check_non_negative, register, weighted
from lakd.errors import LakdError


class ConvRegressor(nn.Module):
    """Student feature ``(Cs, Hs, Ws)`` -> teacher feature ``(Ct, Ht, Wt)``: resize, conv, BN, ReLU.

    A larger student map is average-pooled and a smaller one nearest-upsampled to the teacher's size, so any
    zoo pair works; the ReLU matches the (post-activation, non-negative) hint.
    """

    def __init__(self, student_shape: tuple[int, int, int], teacher_shape: tuple[int, int, int],
                 kernel_size: int = 1) -> None:
        super().__init__()
        self.size = tuple(teacher_shape[1:])
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size, padding=kernel_size // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(teacher_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) != self.size:
            if h * w > self.size[0] * self.size[1]:
                x = F.adaptive_avg_pool2d(x, self.size)
            else:
                x = F.interpolate(x, size=self.size, mode="nearest")
        return F.relu(self.bn(self.conv(x)))


def fitnet_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the regressed student feature and the teacher's hint (fp32)."""
    return F.mse_loss(regressed.float(), hint.float())


def resolve_stages(n_student: int, n_teacher: int, hint_stage: int) -> tuple[int, int]:
    """``(student index, teacher index)``: -1 = the teacher's middle stage; the student stage is aligned
    from the end (the same index when both nets have as many stages)."""
    t = n_teacher // 2 if hint_stage == -1 else hint_stage
    if not 0 <= t < n_teacher:
        raise LakdError(f"distill.params.hint_stage={hint_stage} is out of range: the teacher has {n_teacher} "
                        f"stages (use 0..{n_teacher - 1}, or -1 for the middle one)")
    s = min(max(t - (n_teacher - n_student), 0), n_student - 1)
    return s, t


@register("fitnet", "Romero et al. 2015: CE + MSE of a regressed middle-stage feature to the teacher's hint")
class FitNet(Distiller):
    """Cross-entropy plus ``feat_weight * MSE(regressor(student stage), teacher hint stage)``."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Romero et al. 2015; mdistiller configs/cifar100/fitnet.yaml: hint layer 2 of (stem, s1, s2, s3) =
        # the middle stage, feat_weight 100, CE 1, 1x1 ConvReg for same-size maps.
        feat_weight: float = 100.0
        hint_stage: int = -1  # teacher stage index; -1 = middle (len(stages) // 2)
        regressor_kernel: int = 1

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("feat_weight", self.feat_weight)
            if self.hint_stage < -1:
                raise LakdError(f"distill.params.hint_stage must be a stage index >= 0 or -1 (middle), "
                                f"got {self.hint_stage}")
            if not 1 <= self.regressor_kernel <= 7 or self.regressor_kernel % 2 == 0:
                raise LakdError(f"distill.params.regressor_kernel must be 1, 3, 5 or 7, got {self.regressor_kernel}")
            if self.hint_stage > 64:
                raise LakdError(f"distill.params.hint_stage must be a stage index (at most 64) or -1 (middle), "
                                f"got {self.hint_stage}")

    params: Params

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s_shapes, t_shapes = self.student_shapes(), self.teacher_shapes()
        self.student_stage, self.teacher_stage = resolve_stages(len(s_shapes), len(t_shapes),
                                                                self.params.hint_stage)
        self.regressor = ConvRegressor(s_shapes[self.student_stage], t_shapes[self.teacher_stage],
                                       self.params.regressor_kernel)

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats_s = self.student_model(x)
        _, feats_t = self.teacher_forward(x)
        p = self.params
        regressed = self.regressor(feats_s[self.student_stage])
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "fitnet": weighted(p.feat_weight, fitnet_loss(regressed, feats_t[self.teacher_stage])),
        }
