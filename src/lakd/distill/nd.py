"""ND: Wang, Cheng, Zhou, Zhang & Zhang, "Improving Knowledge Distillation via Regularizing Feature Norm and
Direction" (arXiv:2305.17007, 2023); official code WangYZ1608/Knowledge-Distillation-via-ND.

The student's penultimate embedding ``s_i`` (the pooled last-stage feature the fc reads) is pulled along the
direction of the teacher's class center ``c_y`` (the mean teacher embedding of class ``y``), and its norm is pushed
up to the larger of its own and the teacher's (CIFAR/utils.py ``DirectNormLoss``)::

    nd = mean_i [ 1 - <s_i, c_{y_i} / ||c_{y_i}||> / max(||s_i||, ||t_i||) ]

When the widths differ the student embedding first goes through BN1d -> Dropout(0.5) -> Linear, as the authors'
CIFAR/Models/embtrans_cifar.py ``EmbTrans`` (only used there for pairs of different widths).

The paper adds ND on top of a logit method (KD++, DKD++). "nd" here is their KD++: CE + KD + ND with the
resnet56 -> resnet20 weights of CIFAR/train_cifar.sh (cls 1, kd 1.0, nd 2.0), T 4 and the KD term (not ND)
ramped in over 20 epochs (``min(1, epoch / warm_up)``, 0-based epochs; defaults of CIFAR/train_cifar_kd.py).

Class centers — our deviation. The authors precompute them offline: one pass of the frozen teacher (eval mode) over
the training set (CIFAR/emb_fea_distribution.py, stored as ckpt/teacher/*/center_emb_train.json). The trainer gives
a method no data set, so by default the centers are the running per-class mean of the teacher's embeddings of the
training batches, accumulated over the first ``center_epochs`` (default 1) epochs and then fixed: from then on they
are the mean over one pass of the training set, as the authors'. Each batch is added before it is used, so every
class in the batch has a center (in the first steps a class's center is the mean of its few samples so far). The
sums and counts are buffers, saved in the state dict (a resumed run keeps them) and summed over processes under
data parallelism (the same centers as one process on the global batch). Centers computed offline can be given
instead: ``ND(..., class_centers=tensor)`` or ``set_class_centers`` (then they are never updated).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lakd.distill.base import (
    Distiller,
    DistillParams,
    check_non_negative,
    check_positive,
    check_temperature,
    register,
    weighted,
)
from lakd.distill.kd import kd_loss
from lakd.errors import LakdError

#: Floor of ``max(||s||, ||t||)`` (both embeddings zero: the loss is 1 instead of NaN).
NORM_EPS = 1e-8


def embedding(feat: torch.Tensor) -> torch.Tensor:
    """The penultimate embedding: the last stage's feature, globally average-pooled and flattened."""
    return F.adaptive_avg_pool2d(feat, 1).flatten(1)


def nd_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``mean_i 1 - <s_i, c_i / ||c_i||> / max(||s_i||, ||t_i||)`` (fp32); ``centers`` holds ``c_{y_i}`` per row."""
    s, t = s_emb.float(), t_emb.float()
    direction = F.normalize(centers.float(), dim=1)
    max_norm = torch.maximum(s.norm(dim=1), t.norm(dim=1)).clamp_min(NORM_EPS)
    return (1.0 - (s * direction).sum(dim=1) / max_norm).mean()


def embedding_projector(in_dim: int, out_dim: int) -> nn.Module:
    """BN1d -> Dropout(0.5) -> Linear(in, out), initialised as ``EmbTrans`` (BN weight 1 / bias 0, Linear bias 0)."""
    proj = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(0.5), nn.Linear(in_dim, out_dim))
    nn.init.zeros_(proj[2].bias)
    return proj


def kd_warmup(epoch: float, warmup_epochs: float) -> float:
    """Factor of the KD term at (fractional, 0-based) ``epoch``: the authors' ``min(1, epoch / warm_up)``.

    CIFAR/train_cifar_kd.py numbers epochs from 0 and keeps the factor constant within an epoch, so the first
    epoch trains without KD and epoch ``warm_up`` (0-based) on has the full weight. A warm-up shorter than one
    epoch (short CPU budgets) ramps continuously from 0 to 1 over that fraction of the first epoch; 0: none.
    """
    if warmup_epochs <= 0:
        return 1.0
    if warmup_epochs >= 1:
        return min(math.floor(max(epoch, 0.0)) / warmup_epochs, 1.0)
    return min(max(epoch / warmup_epochs, 0.0), 1.0)


@register("nd", "Wang et al. 2023 (KD++): CE + KD + norm-and-direction loss to the teacher's class centers")
class ND(Distiller):
    """KD++: cross-entropy, Hinton KD (warmed up) and the norm-and-direction loss to the teacher's class centers."""

    @dataclasses.dataclass
    class Params(DistillParams):
        # Wang et al., CIFAR/train_cifar.sh KD++ resnet56 -> resnet20: cls 1, kd 1.0, nd 2.0; train_cifar_kd.py
        # defaults: T 4, KD warm-up 20 epochs. center_epochs is ours (see the module docstring).
        ce_weight: float = 1.0
        kd_weight: float = 1.0
        temperature: float = 4.0
        nd_weight: float = 2.0
        warmup_epochs: float = 20.0  # of the KD term only, as the authors
        center_epochs: float = 1.0  # class centers: running mean over the first center_epochs epochs, then fixed

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("kd_weight", self.kd_weight)
            check_temperature("temperature", self.temperature)
            check_non_negative("nd_weight", self.nd_weight)
            check_non_negative("warmup_epochs", self.warmup_epochs)
            check_positive("center_epochs", self.center_epochs)

    params: Params
    class_sum: torch.Tensor
    class_count: torch.Tensor
    centers_fixed: torch.Tensor

    def __init__(self, *args: Any, class_centers: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.teacher is not None
        s_dim, t_dim = self.student_shapes()[-1][0], self.teacher_shapes()[-1][0]
        num_classes = self.teacher.num_classes(self.input_shape)
        self.projector: nn.Module | None = None
        if s_dim != t_dim:
            self.projector = embedding_projector(s_dim, t_dim)
            self.min_batch_size = 2
            self.min_batch_reason = ("the embedding projector (student and teacher widths differ) batch-normalises "
                                     "the embeddings, which needs two samples for a batch statistic")
        self.register_buffer("class_sum", torch.zeros(num_classes, t_dim))
        self.register_buffer("class_count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("centers_fixed", torch.tensor(0))  # 1: given centers, never updated (long: gloo-safe)
        if class_centers is not None:
            self.set_class_centers(class_centers)

    @torch.no_grad()
    def set_class_centers(self, centers: torch.Tensor) -> None:
        """Use ``centers`` (num_classes x teacher width, e.g. computed offline as the authors) and never update them."""
        centers = torch.as_tensor(centers)
        if tuple(centers.shape) != tuple(self.class_sum.shape):
            raise LakdError(f"method 'nd': class_centers must have shape {tuple(self.class_sum.shape)} (classes x "
                            f"teacher embedding width), got {tuple(centers.shape)}")
        self.class_sum.copy_(centers)
        self.class_count.fill_(1)
        self.centers_fixed.fill_(1)

    def class_centers(self) -> torch.Tensor:
        """The current centers (num_classes x width); rows of classes not seen yet are zero."""
        return self.class_sum / self.class_count.clamp_min(1).unsqueeze(1).to(self.class_sum.dtype)

    @torch.no_grad()
    def _centers_for(self, t_emb: torch.Tensor, y: torch.Tensor, epoch: float) -> torch.Tensor:
        """``c_{y_i}`` for every sample, after adding this batch to the running sums while they accumulate."""
        t_emb = t_emb.float()
        num_classes = self.class_sum.shape[0]
        batch_sum = torch.zeros(num_classes, t_emb.shape[1], device=t_emb.device).index_add_(0, y, t_emb)
        batch_count = torch.bincount(y, minlength=num_classes)
        if not bool(self.centers_fixed) and epoch < self.params.center_epochs:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(batch_sum)
                dist.all_reduce(batch_count)
            self.class_sum += batch_sum.to(self.class_sum.dtype)
            self.class_count += batch_count
        # A class with no center yet (only when they stopped accumulating before it was seen): its batch mean.
        local = batch_sum / batch_count.clamp_min(1).unsqueeze(1)
        centers = torch.where((self.class_count == 0).unsqueeze(1), local, self.class_centers().float())
        return centers[y]

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.check_batch(x)
        logits, feats_s = self.student_model(x)
        t_logits, feats_t = self.teacher_forward(x)
        p = self.params
        s_emb = embedding(feats_s[-1])
        if self.projector is not None:
            s_emb = self.projector(s_emb)
        t_emb = embedding(feats_t[-1]).float()
        centers = self._centers_for(t_emb, y, self.epochs_done(progress))
        ramp = kd_warmup(self.epochs_done(progress), p.warmup_epochs)
        return logits, {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "kd": weighted(ramp * p.kd_weight, kd_loss(logits, t_logits, p.temperature)),
            "nd": weighted(p.nd_weight, nd_loss(s_emb, t_emb, centers)),
        }
