"""ReviewKD: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review" (CVPR 2021).

Every teacher stage is supervised by a *review* of student features: the student's features are walked from the
deepest to the shallowest, and at each level an attention-based fusion (ABF) module mixes the current student
feature with the running residual from the deeper levels before a 3x3 conv maps it to the teacher's channels and
resolution. The hierarchical context loss (HCL) compares each output with the teacher's feature as an MSE on the
full map plus MSEs on 4x4, 2x2 and 1x1 average-pooled versions, the weights halving per level and the sum divided
by the total weight.

Levels, as in mdistiller's ReviewKD: the teacher's pre-activation stage features and the student's stage features
(post-activation by default, mdistiller's STU_PREACT False; ``student_preact`` switches), plus (with
``pooled_level``, the default) the globally pooled post-activation last feature of each as an extra 1x1 level,
which starts the review chain. When the nets have different stage counts, the last ``min`` stages of each are paired
(the shallowest extra stages are unused); outputs take the teacher's stage resolution.

Published recipe (official ReviewKD ``CIFAR-100/script/reviewKD.sh`` and ``model/reviewkd.py``; mdistiller
``configs/cifar100/reviewkd.yaml``): CE 1; HCL weight 5.0 for most pairs, 0.6 for resnet56->resnet20, 1.0 for
resnet110->resnet32, 8.0 for resnet32x4->ShuffleNetV2 (the per-pair values live in ``configs/cifar100_pairs/``
under ``per_method``; 5.0 is the default for any other pair); loss warm-up over 20 epochs (mdistiller's rule, see
``linear_warmup``); bottleneck width ``min(512, channels of the student's last feature)`` (``mid_channels`` 0, the
default: 64 for resnet20, 256 for resnet8x4, 512 for the ShuffleNets). The optimiser settings of the official
script (batch 128, lr 0.1, nesterov) are not the method's: our protocols train every method with one recipe.

Deviations: a student map larger than the teacher's is average-pooled to the teacher's size (the original always
used nearest interpolation; only pairs with a student stage finer than its teacher stage are affected, e.g. a
CIFAR ResNet student of a ShuffleNet/MobileNetV2 teacher); HCL skips pyramid
levels ``>= min(H, W)`` (the original's ``>= H`` on square maps) and runs in fp32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lakd.distill.at import paired_stages
from lakd.distill.base import Distiller, DistillParams, check_non_negative, linear_warmup, register, weighted
from lakd.errors import LakdError
from lakd.models.frozen import TeacherOutputs, all_outputs

#: HCL pyramid levels (output side of the adaptive average pool), as in the paper's code.
HCL_LEVELS: tuple[int, ...] = (4, 2, 1)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at spatial ``size``: nearest upsampling (as the original) or average pooling when shrinking."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv+BN to ``mid``, fuse with the deeper residual through a 2-channel
    sigmoid attention, resize to the teacher's resolution, 3x3 conv+BN to the teacher's channels.

    Returns ``(output for the loss, residual passed to the next shallower level)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # the released code's init
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None and residual is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        x = resize(x, out_size)
        return self.conv2(x), x


def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
             levels: Sequence[int] = HCL_LEVELS) -> torch.Tensor:
    """Hierarchical context loss summed over feature pairs (Chen et al., Sec. 3.3), in fp32.

    Per pair: ``(MSE(full) + sum_i w_i MSE(avgpool_l_i)) / (1 + sum_i w_i)`` with ``w`` = 1/2, 1/4, ... over the
    levels actually used; a level ``l`` is skipped when ``l >= min(H, W)`` (it would not coarsen the map), so a
    4x4 map uses 2x2 (w 1/2) and 1x1 (w 1/4), and a 1x1 map only the full MSE.
    """
    total = torch.zeros((), device=student_feats[0].device)
    for fs, ft in zip(student_feats, teacher_feats, strict=True):
        fs, ft = fs.float(), ft.float()
        side = min(fs.shape[-2:])
        loss = F.mse_loss(fs, ft)
        weight, weight_sum = 1.0, 1.0
        for level in levels:
            if level >= side:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            weight_sum += weight
        total = total + loss / weight_sum
    return total


def review_levels(out: TeacherOutputs, preact: bool, pooled: bool) -> list[torch.Tensor]:
    """The stage features of one forward (pre-activation if ``preact``) plus, if ``pooled``, the globally pooled
    post-activation last feature as a ``(N, C, 1, 1)`` map (it needs the post-activation output beside the
    pre-activation ones, which is why a single forward keeps both)."""
    levels = list(out.pres if preact else out.posts)
    if pooled:
        levels.append(F.adaptive_avg_pool2d(out.posts[-1], 1))
    return levels


@register("reviewkd", "Chen et al. 2021: CE + knowledge review (fused multi-stage features, HCL loss)")
class ReviewKD(Distiller):
    """Cross-entropy plus ``reviewkd_weight * warmup * HCL(review chain of student features, teacher features)``."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Chen et al. 2021, official CIFAR-100 script: CE 1, weight 5.0 (most pairs; per-pair values in
        # configs/cifar100_pairs), warm-up 20 epochs, mid width min(512, student's last channels) (= 0 here).
        ce_weight: float = 1.0
        reviewkd_weight: float = 5.0
        warmup_epochs: float = 20.0
        mid_channels: int = 0
        pooled_level: bool = True  # add the pooled last feature as a 1x1 level (the original's embedding level)
        student_preact: bool = False  # student stage features before their final ReLU (mdistiller STU_PREACT)

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("reviewkd_weight", self.reviewkd_weight)
            check_non_negative("warmup_epochs", self.warmup_epochs)
            if not 0 <= self.mid_channels <= 2048:  # the official widths are at most 512
                raise LakdError(f"distill.params.mid_channels must be in [1, 2048] (or 0 for the automatic width), "
                                f"got {self.mid_channels}")

    params: Params

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        s_shapes, t_shapes = self.student_shapes(), self.teacher_shapes()
        pairs = paired_stages(len(s_shapes), len(t_shapes))
        self.student_levels = [s for s, _ in pairs]
        self.teacher_levels = [t for _, t in pairs]
        in_shapes = [s_shapes[s] for s in self.student_levels]
        out_shapes = [t_shapes[t] for t in self.teacher_levels]
        if p.pooled_level:
            self.student_levels.append(len(s_shapes))
            self.teacher_levels.append(len(t_shapes))
            in_shapes.append((s_shapes[-1][0], 1, 1))
            out_shapes.append((t_shapes[-1][0], 1, 1))
        mid = p.mid_channels if p.mid_channels > 0 else min(512, in_shapes[-1][0])
        #: teacher (H, W) of each level, shallowest first
        self.out_sizes = [(int(s[1]), int(s[2])) for s in out_shapes]
        # Deepest level first: it starts the chain and has nothing to fuse with.
        n = len(in_shapes)
        self.abfs = nn.ModuleList(
            ABF(in_shapes[i][0], mid, out_shapes[i][0], fuse=i < n - 1) for i in reversed(range(n))
        )
        if any(h * w == 1 for h, w in self.out_sizes) or any(s[1] * s[2] == 1 for s in in_shapes):
            self.min_batch_size = 2
            self.min_batch_reason = ("its fusion modules batch-normalise 1x1 maps (the pooled level), which needs "
                                     "two samples for a batch statistic")

    def review(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student levels (shallowest first) -> one output per level in teacher shape (shallowest first)."""
        outputs: list[torch.Tensor] = []
        residual: torch.Tensor | None = None
        for abf, feat, size in zip(self.abfs, reversed(levels), reversed(self.out_sizes), strict=True):
            out, residual = abf(feat, residual, size)
            outputs.insert(0, out)
        return outputs

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        self.check_batch(x)
        student = all_outputs(self.student_model, x)
        logits, levels_s = student.logits, review_levels(student, p.student_preact, p.pooled_level)
        levels_t = review_levels(self.teacher_outputs(x), True, p.pooled_level)
        outputs = self.review([levels_s[i] for i in self.student_levels])
        targets = [levels_t[i] for i in self.teacher_levels]
        factor = linear_warmup(self.epochs_done(progress), p.warmup_epochs)
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "reviewkd": weighted(p.reviewkd_weight * factor, hcl_loss(outputs, targets)),
        }
