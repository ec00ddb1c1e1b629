"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017).

The student matches the teacher's spatial attention maps ``normalize(mean_c F^p)`` at every stage. Defaults are
the paper's / mdistiller's CIFAR settings (mdistiller configs/cifar100/at.yaml, RepDistiller ``-a 0 -b 1000``):
p 2, beta 1000, ce_weight 1.

Which maps: the peers use ``feats[1:]`` (mdistiller) / ``feat[1:-1]`` (RepDistiller), i.e. every feature after the
first one their models return. For the CIFAR ResNets / WRNs that first one is the stem output, which is not one
of our stages, so all our stages are used. A VGG's first feature is its first conv group, which *is* our stage 0,
so on VGG that stage is skipped (stages 1-4, as the peers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from lakd.distill.base import Distiller, DistillParams, check_non_negative, check_positive, register, weighted
from lakd.models.base import StagedModel


def at_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(N, C, H, W) -> (N, H*W)``: channel mean of ``|F|^p``, L2-normalised per sample (fp32)."""
    feat = feat.float()
    return F.normalize(feat.abs().pow(p).mean(1).flatten(1), dim=1)


def match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger to the other's size (only heterogeneous pairs differ)."""
    hs, ws = fs.shape[-2:]
    ht, wt = ft.shape[-2:]
    if (hs, ws) == (ht, wt):
        return fs, ft
    if hs * ws > ht * wt:
        return F.adaptive_avg_pool2d(fs, (ht, wt)), ft
    return fs, F.adaptive_avg_pool2d(ft, (hs, ws))


def at_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the two normalised attention maps (one stage pair)."""
    fs, ft = match_spatial(fs.float(), ft.float())
    return (at_map(fs, p) - at_map(ft, p)).pow(2).mean()


def at_stages(model: StagedModel) -> list[int]:
    """Stage indices AT matches on ``model``: all but VGG's first conv group (see the module docstring)."""
    n = model.num_stages
    return list(range(1, n)) if (getattr(model, "arch_name", None) or "").startswith("vgg") else list(range(n))


def paired_stages(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Stage pairs ``(student index, teacher index)``: the last ``min`` stages of each, in order."""
    n = min(n_student, n_teacher)
    return [(n_student - n + i, n_teacher - n + i) for i in range(n)]


@register("at", "Zagoruyko & Komodakis 2017: CE + attention maps (spatial, p=2) of every stage")
class AT(Distiller):
    """Cross-entropy plus ``beta * sum over stages of at_loss``."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Zagoruyko & Komodakis 2017; mdistiller configs/cifar100/at.yaml: p 2, beta 1000, CE 1.
        beta: float = 1000.0
        p: float = 2.0

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("beta", self.beta)
            check_positive("p", self.p)

    params: Params

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s_stages, t_stages = at_stages(self.student_model), at_stages(self.teacher)
        self.pairs = [(s_stages[i], t_stages[j]) for i, j in paired_stages(len(s_stages), len(t_stages))]

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats_s = self.student_model(x)
        _, feats_t = self.teacher_forward(x)
        p = self.params
        loss = sum((at_loss(feats_s[i], feats_t[j], p.p) for i, j in self.pairs), torch.zeros((), device=x.device))
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "at": weighted(p.beta, loss),
        }
