"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation" (ICLR 2020).

The student's penultimate representation (global-average-pooled last stage) and the teacher's are embedded by
linear heads onto the unit sphere (``feat_dim`` 128) and trained with a noise-contrastive objective: for every
sample its own teacher embedding is the positive and ``nce_k`` training samples *of other classes*, drawn
without replacement, are the negatives, both looked up in a memory bank of past embeddings (and symmetrically
teacher-anchored against the student bank). That is the released CIFAR recipe (RepDistiller
``CIFAR100InstanceSample``, ``mode='exact'``: the positive is the sample itself, negatives from
``cls_negative[target]``, with replacement only when a pool is smaller than ``nce_k``).

Defaults are the paper's / RepDistiller's CIFAR-100 settings: feat_dim 128, nce_k 16384, nce_t 0.07,
nce_momentum 0.5, CE weight 1 and CRD weight (``beta``) 0.8, no KD term (``kd_weight`` > 0 gives CRD+KD).

The scores are the released code's (``exp(<e, m> / T) / Z`` of the sampled rows), computed one of two ways with
the same values to float rounding: gathering the ``(B, K+1, D)`` sampled rows (the released code's way, 1 GB per
bank at batch 128 and K 16384) or, where the bank is at most ``DENSE_BANK_FACTOR`` times the sample count (CIFAR:
45,000 rows against 16,385), one ``(B, N)`` matmul against the whole bank and a gather of its ``(B, K+1)``
entries: a CRD step 5.4x faster on a 2-core CPU (docs/studies/cifar10-strong-campaign.md) and 237 MB instead of 1,018
held for backward. The banks are then updated
out of place, so the matmul's backward sees the bank as it was in the forward.

Deviations from the released code: the negatives are drawn in the training step (a random top-k over the
other-class pool) rather than by the data loader; the positive is always at position 0; on data sets too small
for ``nce_k`` distinct negatives, the draw is with replacement (as the released code) and ``nce_k`` is clamped to
``num_train_samples - 1``; the L2 normalisation has an ``eps`` (``F.normalize``); the loss is computed in fp32
with autocast disabled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lakd.distill.base import (
    Distiller,
    DistillParams,
    check_non_negative,
    check_temperature,
    register,
    weighted,
)
from lakd.distill.kd import kd_loss
from lakd.errors import LakdError
from lakd.models.base import StagedModel

#: RepDistiller's ContrastLoss epsilon, guarding the divisions of the NCE posterior.
NCE_EPS = 1e-7
#: Score against the whole bank (a matmul) rather than gather the sampled rows when the bank has at most this
#: many times the K+1 rows a sample scores: a dense matmul element costs far less than a gathered row's copy.
DENSE_BANK_FACTOR = 8


class Embed(nn.Module):
    """Linear projection to ``feat_dim`` followed by L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def contrast_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss of ``scores`` ``(B, K+1)`` (column 0 the positive), averaged over the batch.

    With the noise distribution uniform, ``Pn = 1 / num_data`` and the posterior of "data" is
    ``P / (P + K Pn)``; the loss is ``-log(P_pos / (P_pos + K Pn)) - sum_neg log(K Pn / (P_neg + K Pn))``
    (Tian et al., Eq. 9-10).
    """
    scores = scores.float()
    k = scores.shape[1] - 1
    noise = k / float(num_data)
    p_pos = scores[:, 0]
    p_neg = scores[:, 1:]
    log_d1 = torch.log(p_pos / (p_pos + noise + NCE_EPS))
    log_d0 = torch.log(noise / (p_neg + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


def momentum_update(rows: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """Memory rows after one update: ``normalize(momentum * old + (1 - momentum) * new)`` (RepDistiller)."""
    mixed = rows * momentum + new * (1.0 - momentum)
    return mixed / mixed.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """Memory banks of student and teacher embeddings plus the NCE normalisation constants.

    Everything is a buffer (non-learnable state): it is checkpointed with the distiller and follows
    ``.to(device)``. ``z_s`` / ``z_t`` are -1 until estimated on the first batch, as in the paper's code.
    """

    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z_s: torch.Tensor
    z_t: torch.Tensor

    def __init__(self, feat_dim: int, labels: torch.Tensor, nce_k: int, nce_t: float, momentum: float) -> None:
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        num_data = int(labels.numel())
        self.num_data = num_data
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.momentum = momentum
        self.dense_bank_factor = DENSE_BANK_FACTOR  # 0: always gather (the released code's way; tests, benchmarks)
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # uniform init of the released code
        self.register_buffer("memory_s", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        # The other-class pool of class c, without a table per class: the samples sorted by class, with class c's
        # block [start[c], start[c] + count[c]) cut out. Position j of the pool is by_class[j + count[c] * (j >=
        # start[c])]. Not checkpointed: rebuilt from the labels.
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        count = torch.bincount(labels)
        self.register_buffer("class_count", count, persistent=False)
        self.register_buffer("class_start", torch.cumsum(count, 0) - count, persistent=False)

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """``(B, K+1)`` bank indices: the sample itself at column 0, then ``K`` samples of other classes, distinct
        within a row (drawn with replacement only where a class's pool is smaller than ``K``)."""
        index = index.to(self.labels.device)
        cls = self.labels[index]
        pool = self.num_data - self.class_count[cls]  # (B,) size of each row's other-class pool
        k = self.nce_k
        if int(pool.min()) >= k:
            keys = torch.rand(index.shape[0], int(pool.max()), device=index.device)
            keys.masked_fill_(torch.arange(keys.shape[1], device=index.device)[None] >= pool[:, None], -1.0)
            pos = keys.topk(k, dim=1, sorted=False).indices
        else:  # a tiny data set: some pool is smaller than K, draw with replacement like the released code
            pos = (torch.rand(index.shape[0], k, device=index.device) * pool[:, None]).long()
        start, count = self.class_start[cls][:, None], self.class_count[cls][:, None]
        negatives = self.by_class[pos + count * (pos >= start)]
        return torch.cat([index[:, None], negatives], dim=1)

    def forward(
        self, e_s: torch.Tensor, e_t: torch.Tensor, index: torch.Tensor, contrast_idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``exp(<e, m> / T) / Z`` of the student embeddings against the teacher bank and of the teacher
        embeddings against the student bank, each ``(B, K+1)``; then the banks are updated at ``index``."""
        if contrast_idx is None:
            contrast_idx = self.sample(index)
        e_s, e_t = e_s.float(), e_t.float()
        dense = self.dense_scores(contrast_idx.shape[1])
        out_s = torch.exp(similarities(e_s, self.memory_t, contrast_idx, dense) / self.nce_t)
        out_t = torch.exp(similarities(e_t, self.memory_s, contrast_idx, dense) / self.nce_t)
        with torch.no_grad():
            # Z = N * E[exp(s / T)], estimated once (first batch) and kept fixed, as in the paper's code.
            if float(self.z_s) < 0:
                self.z_s.fill_(float(out_s.mean()) * self.num_data)
            if float(self.z_t) < 0:
                self.z_t.fill_(float(out_t.mean()) * self.num_data)
        out_s = out_s / self.z_s
        out_t = out_t / self.z_t
        self.update(e_s, e_t, index, out_of_place=dense and torch.is_grad_enabled())
        return out_s, out_t

    def dense_scores(self, row_count: int) -> bool:
        """Whether scores are taken against the whole bank (one matmul) rather than from gathered rows."""
        return self.num_data <= self.dense_bank_factor * row_count

    @torch.no_grad()
    def update(self, e_s: torch.Tensor, e_t: torch.Tensor, index: torch.Tensor, out_of_place: bool = False) -> None:
        """Momentum-mix the batch's embeddings into both banks at ``index`` and re-normalise those rows. Out of
        place (new bank tensors) when a pending backward still needs the banks as they were."""
        new_s = momentum_update(self.memory_s[index], e_s.detach(), self.momentum)
        new_t = momentum_update(self.memory_t[index], e_t.detach(), self.momentum)
        if out_of_place:
            self.memory_s = self.memory_s.index_copy(0, index, new_s)
            self.memory_t = self.memory_t.index_copy(0, index, new_t)
        else:
            self.memory_s.index_copy_(0, index, new_s)
            self.memory_t.index_copy_(0, index, new_t)


def similarities(anchors: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, dense: bool) -> torch.Tensor:
    """``<anchors[b], bank[rows[b, k]]>`` as ``(B, K+1)``: from one matmul against the whole bank (``dense``) or
    from the gathered rows (the released code's way); the same values to float rounding."""
    if dense:
        return (anchors @ bank.T).gather(1, rows)
    return torch.einsum("bkd,bd->bk", bank[rows], anchors)


MAX_FEAT_DIM = 1024
MAX_NCE_K = 65536
MAX_NCE_K_TIMES_DIM = 4 * 16384 * 128


@register("crd", "Tian et al. 2020: CE + contrastive representation distillation (memory bank of negatives)")
class CRD(Distiller):
    """Cross-entropy plus ``crd_weight`` * (student-anchored + teacher-anchored NCE loss) [+ optional KD]."""

    needs_index = True
    renamed_params = {"kd_temperature": "temperature"}

    @dataclasses.dataclass
    class Params(DistillParams):
        # Tian et al. 2020; RepDistiller train_student.py defaults (feat_dim 128, nce_k 16384, nce_t 0.07,
        # nce_m 0.5) and its README command for CRD (-r 1 -a 0 -b 0.8: CE 1, KD 0, CRD 0.8); KD T 4 if enabled.
        ce_weight: float = 1.0
        crd_weight: float = 0.8
        kd_weight: float = 0.0
        temperature: float = 4.0  # of the KD term (named as in every other method; kd_temperature until issue 32)
        feat_dim: int = 128
        nce_k: int = 16384
        nce_t: float = 0.07
        nce_momentum: float = 0.5

        def validate(self) -> None:
            check_non_negative("ce_weight", self.ce_weight)
            check_non_negative("crd_weight", self.crd_weight)
            check_non_negative("kd_weight", self.kd_weight)
            check_temperature("temperature", self.temperature)
            check_temperature("nce_t", self.nce_t)
            # upper bounds: the memory banks hold train-set size x feat_dim floats, and a gathered step
            # batch x (nce_k + 1) x feat_dim (the published 128 and 16,384: 1 GB at batch 128)
            if not 1 <= self.feat_dim <= MAX_FEAT_DIM:
                raise LakdError(f"distill.params.feat_dim must be in [1, {MAX_FEAT_DIM}], got {self.feat_dim}")
            if not 1 <= self.nce_k <= MAX_NCE_K:
                raise LakdError(f"distill.params.nce_k must be in [1, {MAX_NCE_K}], got {self.nce_k}")
            if self.nce_k * self.feat_dim > MAX_NCE_K_TIMES_DIM:
                raise LakdError(f"distill.params.nce_k x feat_dim = {self.nce_k * self.feat_dim:,} must be at most "
                                f"{MAX_NCE_K_TIMES_DIM:,} (4x the published 16,384 x 128): a step would gather "
                                "batch x nce_k x feat_dim floats")
            if not 0.0 <= self.nce_momentum <= 1.0:
                raise LakdError(f"distill.params.nce_momentum must be in [0, 1], got {self.nce_momentum}")

    params: Params

    def __init__(
        self,
        student: StagedModel,
        teacher: StagedModel | None,
        params: DistillParams | None = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        total_epochs: float = 1,
        *,
        train_labels: torch.Tensor,
    ) -> None:
        super().__init__(student, teacher, params, input_shape=input_shape, total_epochs=total_epochs)
        train_labels = torch.as_tensor(train_labels, dtype=torch.long).flatten()
        num_train_samples = int(train_labels.numel())
        if num_train_samples < 2 or int(torch.unique(train_labels).numel()) < 2:
            raise LakdError(f"method 'crd' needs at least 2 training samples of at least 2 classes for its memory "
                            f"bank (negatives come from other classes), got {num_train_samples}")
        p = self.params
        self.num_train_samples = num_train_samples
        self.nce_k = min(p.nce_k, num_train_samples - 1)
        self.embed_s = Embed(self.student_shapes()[-1][0], p.feat_dim)
        self.embed_t = Embed(self.teacher_shapes()[-1][0], p.feat_dim)
        self.contrast = ContrastMemory(p.feat_dim, train_labels, self.nce_k, p.nce_t, p.nce_momentum)

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, index: torch.Tensor | None = None, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if index is None:
            raise LakdError("method 'crd' needs the dataset index of every sample (forward_train(..., index=))")
        logits, feats_s = self.student_model(x)
        t_logits, feats_t = self.teacher_forward(x)
        p = self.params
        with torch.autocast(device_type=x.device.type, enabled=False):
            # RepDistiller's feat[-1]: the globally pooled last-stage feature the classifier sees.
            e_s = self.embed_s(feats_s[-1].float().mean((2, 3)))
            e_t = self.embed_t(feats_t[-1].float().mean((2, 3)))
            out_s, out_t = self.contrast(e_s, e_t, index.to(device=e_s.device, dtype=torch.long))
            crd = contrast_loss(out_s, self.num_train_samples) + contrast_loss(out_t, self.num_train_samples)
        losses = {
            "ce": weighted(p.ce_weight, F.cross_entropy(logits.float(), y)),
            "crd": weighted(p.crd_weight, crd),
        }
        if p.kd_weight > 0:
            losses["kd"] = weighted(p.kd_weight, kd_loss(logits, t_logits, p.temperature))
        return logits, losses
