"""``lakd-study``: LAKD's core plus the variants its studies tried and did not keep (issue 6's design study, issue
16's local-module study; docs/studies-lakd.md records what each did). Each variant is a parameter of
:class:`StudyParams` and an override of one of the core's named hooks; at the variants' defaults ``lakd-study``
computes exactly what ``lakd`` does (tests/test_lakd.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from lakd.distill.base import MAX_TEMPERATURE, MIN_TEMPERATURE, linear_warmup, register, weighted
from lakd.distill.dkd import dkd_loss
from lakd.distill.kd import kd_loss, standardise_logits
from lakd.distill.lakd import LAKD, LossForms, Params, Piece, out_of_range
from lakd.distill.local_losses import FEAT_FORMS
from lakd.distill.ndam import NATIVE
from lakd.errors import LakdError
from lakd.models.base import StagedModel


@dataclass
class StudyParams(Params):
    """LAKD's core fields, then the variants; every variant at its default is exactly ``lakd``."""

    logit_stand: bool = False  # z-score both logits before the logit term (Sun et al. 2024; kd.standardise_logits)
    aux_weight: float = 0.0  # CE of an auxiliary classifier on every intermediate module (0 = off)
    # linear: a pool + linear head per module; teacher_tail: the module's projected feature goes through the frozen
    # teacher's remaining stages and classifier (a task signal for every module, no gradient across a boundary)
    aux_head: str = "linear"
    logit_loss: str = "kd"  # kd (Hinton) | dkd (decoupled: dkd_alpha * TCKD + dkd_beta * NCKD), times kd_weight
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    logit_warmup_epochs: float = 0.0  # the logit term ramps in linearly over these epochs (DKD needs it; 0 = off)
    feat_form: str = "mse"  # mse (raw) | channel_norm (MSE after per-channel standardisation) | cosine
    feat_spatial_weighting: bool = False  # weight the feature loss per position by the teacher's NDAM map
    feat_modules: list[int] = field(default_factory=list)  # modules that get the feature loss ([] = all; -1 = last)
    feat_scales: list[int] = field(default_factory=lambda: [0])  # grids of the feature loss (0 = native)
    feat_target: str = "post"  # teacher feature the feature loss matches: post(-activation) | preact (before ReLU)
    feat_projector: str = "auto"  # auto (1x1 conv + BN only where widths differ) | always
    ndam_mode: str = "l2"  # l2 | kl
    ndam_tau: float = 1.0  # spatial-softmax temperature (kl mode)
    split: str = "stage"  # stage (split table / one module per stage) | block (stages of >= 2 blocks cut in two)

    def validate(self) -> None:
        super().validate()
        for name in ("aux_weight", "dkd_alpha", "dkd_beta", "logit_warmup_epochs"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too
                raise out_of_range(self, name, ">= 0 and finite")
        if not MIN_TEMPERATURE <= self.ndam_tau <= MAX_TEMPERATURE:
            raise out_of_range(self, "ndam_tau", f"in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}]")
        choices = {"aux_head": ("linear", "teacher_tail"), "feat_form": FEAT_FORMS, "feat_target": ("post", "preact"),
                   "feat_projector": ("auto", "always"), "logit_loss": ("kd", "dkd"), "ndam_mode": ("l2", "kl"),
                   "split": ("stage", "block")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise out_of_range(self, name, " | ".join(f"'{a}'" for a in allowed))
        if not self.feat_scales or any(s < 0 for s in self.feat_scales):
            raise out_of_range(self, "feat_scales", "a non-empty list of grid sizes >= 1, or 0 for the native grid")


class PiecesView(StagedModel):
    """A zoo student seen with one stage per piece (a whole stage or a range of its blocks), sharing its modules:
    a split finer than the student's stages runs through the same ``forward_cut`` as any other."""

    def __init__(self, student: StagedModel, pieces: list[Piece]) -> None:
        super().__init__()
        self.stem, self.head, self.arch_name = student.stem, student.head, student.arch_name
        self.stages = nn.ModuleList(
            student.stages[i] if start is None else nn.Sequential(*list(student.stages[i])[start:end])
            for i, start, end in pieces)


def block_pieces(student: StagedModel) -> list[list[Piece]]:
    """``split: block``: every stage of two or more blocks cut in two at its middle block (a one-block stage stays
    one module)."""
    if not student.runs_stage_by_stage:
        raise LakdError(f"distill.params.split = 'block' cuts stages into blocks, which needs a zoo student; "
                        f"'{student.arch_name}' is a hooked model: use split = 'stage' (or more stage paths)")
    pieces: list[list[Piece]] = []
    for i in range(student.num_stages):
        stage = student.stages[i]
        if not isinstance(stage, nn.Sequential):
            raise LakdError(f"distill.params.split = 'block' needs stages made of blocks (nn.Sequential); "
                            f"stage {i} of this student is a {type(stage).__name__}: use split = 'stage'")
        if len(stage) < 2:
            pieces.append([(i, None, None)])
            continue
        mid = len(stage) // 2
        pieces += [[(i, 0, mid)], [(i, mid, len(stage))]]
    return pieces


@register("lakd-study", "LAKD plus the variants its studies tried and did not keep (docs/method.md, section 5)")
class LAKDStudy(LAKD):
    """LAKD with the study variants' parameters (:class:`StudyParams`), each an override of a core hook."""

    Params = StudyParams
    params: StudyParams
    #: every variant at its default is the core: a result of ``lakd`` (or of this method before a variant existed)
    #: that did not record it was made with that default
    inert_params: ClassVar[dict[str, Any]] = {
        name: getattr(StudyParams(), name) for name in StudyParams.__dataclass_fields__
        if name not in Params.__dataclass_fields__}
    params_moved_to: ClassVar[str | None] = None

    def __init__(self, student: StagedModel, teacher: StagedModel | None, params: StudyParams | None = None,
                 input_shape: tuple[int, int, int] = (3, 32, 32), total_epochs: float = 1,
                 arch: str | None = None) -> None:
        p = params or StudyParams()
        tail = p.aux_weight > 0 and p.aux_head == "teacher_tail"
        if tail and teacher is not None and not teacher.runs_stage_by_stage:
            raise LakdError(f"distill.params.aux_head = 'teacher_tail' runs the teacher from a middle stage on, "
                            f"which needs a zoo teacher; '{teacher.arch_name}' is a hooked model: use "
                            "aux_head = 'linear'")
        super().__init__(student, teacher, params, input_shape, total_epochs, arch)
        num_modules, t_shapes, out_shapes = self.num_modules, self.teacher_shapes(), self.module_output_shapes
        if self.teacher_tail_on and any(self.teacher_index[k] >= len(t_shapes) - 1 for k in range(num_modules - 1)):
            raise LakdError("distill.params.aux_head = 'teacher_tail' needs a teacher stage after the one each "
                            f"intermediate module is matched to (modules -> teacher stages {self.teacher_index})")
        self.teacher_grids = [tuple(shape[1:]) for shape in t_shapes]  # where the teacher tail starts
        num_classes = self.student_model.num_classes(self.input_shape)
        self.aux_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_shapes[k][0], num_classes))
            for k in range(num_modules - 1)
        ) if p.aux_weight > 0 and p.aux_head == "linear" else nn.ModuleList()
        if p.feat_weight > 0 and p.feat_form == "channel_norm":
            grids = [min(out_shapes[k][1], t_shapes[self.teacher_index[k]][1]) * min(
                out_shapes[k][2], t_shapes[self.teacher_index[k]][2]) for k in self.feat_module_set]
            if 1 in p.feat_scales or 1 in grids:
                self.min_batch_size = 2
                self.min_batch_reason = ("feat_form 'channel_norm' standardises each channel over the batch and "
                                         "a 1x1 grid, which needs two samples")

    # -- the hooks ---------------------------------------------------------------------------------------
    def local_modules(self, student: StagedModel, arch: str | None) -> list[list[Piece]]:
        return block_pieces(student) if self.params.split == "block" else super().local_modules(student, arch)

    def make_runner(self) -> tuple[StagedModel, dict[int, int]]:
        flat = [piece for pieces in self.pieces for piece in pieces]
        if all(start is None for _, start, _ in flat):
            return super().make_runner()
        ends = itertools.accumulate(len(pieces) for pieces in self.pieces)  # a view's stage per piece
        return PiecesView(self.student_model, flat), {end - 1: k for k, end in enumerate(ends)}

    def feature_modules(self) -> set[int]:
        chosen, n = self.params.feat_modules, self.num_modules
        for index in chosen:
            if not -n <= index < n:
                raise LakdError(f"distill.params.feat_modules = {chosen} names module {index}, but this "
                                f"student has {n} local modules: use 0..{n - 1}, -1 = the last")
        return {i % n for i in chosen} or super().feature_modules()

    @property
    def teacher_tail_on(self) -> bool:
        return self.params.aux_weight > 0 and self.params.aux_head == "teacher_tail"

    def needs_projector(self, k: int) -> bool:  # the teacher tail starts from the projected feature
        return super().needs_projector(k) or (self.teacher_tail_on and k < self.num_modules - 1)

    def projector_always(self) -> bool:
        return self.params.feat_projector == "always"

    def feature_target_preact(self) -> bool:
        return self.params.feat_target == "preact"

    def logit_loss(self, logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.logit_stand:
            logits, t_logits = standardise_logits(logits), standardise_logits(t_logits)
        if p.logit_loss == "dkd":
            return dkd_loss(logits, t_logits, y, p.dkd_alpha, p.dkd_beta, p.temperature)
        return kd_loss(logits, t_logits, p.temperature)

    def logit_factor(self, progress: float) -> float:
        p = self.params
        return p.kd_weight * linear_warmup(self.epochs_done(progress), p.logit_warmup_epochs)

    def aux_losses(self, k: int, feat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Module k's auxiliary-classifier CE (intermediate modules, ``aux_weight > 0``)."""
        p = self.params
        if p.aux_weight <= 0 or k >= self.num_modules - 1:
            return {}
        aux_logits = self.teacher_tail(k, feat) if p.aux_head == "teacher_tail" else self.aux_heads[k](feat)
        return {f"aux{k}": weighted(p.aux_weight, F.cross_entropy(aux_logits.float(), y))}

    def loss_forms(self) -> LossForms:
        p = self.params
        return LossForms(p.feat_form, p.feat_spatial_weighting, tuple(NATIVE if g == 0 else g for g in p.feat_scales),
                         p.ndam_mode, p.ndam_tau)

    def teacher_tail(self, k: int, feat: torch.Tensor) -> torch.Tensor:
        """Logits of module k's projected feature run through the frozen teacher's later stages and classifier.

        The teacher's weights get no gradient (they are frozen); the gradient reaches only module k and its
        projector, so no gradient crosses a student module boundary. The tail is recomputed in backward rather
        than held (its activations would outweigh the student's).
        """
        assert self.teacher is not None
        h = self.projectors[k](feat)
        index = self.teacher_index[k]
        grid = self.teacher_grids[index]
        if tuple(h.shape[-2:]) != tuple(grid):
            h = F.adaptive_avg_pool2d(h, grid) if h.shape[-1] > grid[-1] else F.interpolate(h, size=grid)
        teacher, first = self.teacher, index + 1

        def tail(z: torch.Tensor) -> torch.Tensor:
            for j in range(first, len(teacher.stages)):
                z, _ = teacher._stage_forward(j, z)
            return teacher.head(z)

        # Recomputed in backward (activation checkpointing): only the tail's input is held, so the local modules
        # keep their memory advantage (held whole, module 0's tail alone is two thirds of the teacher).
        return torch.utils.checkpoint.checkpoint(tail, h, use_reentrant=False)

