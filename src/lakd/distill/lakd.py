"""LAKD — Local Attention Knowledge Distillation (arXiv 2408.11478), as *we* read it.

Only the paper's abstract is public; every choice below is ours, switchable in ``Params`` and documented in
docs/method.md.

* **SDM — local modules with independent gradients.** The student's stages are grouped into K modules by a
  split table (default: one module per stage; the stem joins module 0, pool + classifier join module K-1).
  Module k+1 receives module k's output *detached*, so no gradient crosses a module boundary.
* **Local losses.** Module k is taught by the teacher's matching stage: a feature MSE (through a 1x1 conv + BN
  projector where channels differ, pooled to the coarser grid where resolutions differ; optionally weighted
  per position by the teacher's NDAM map) and an NDAM loss (see ndam.py). Optional auxiliary classifiers on
  intermediate modules. The last module also has ``ce_weight * CE`` and a logit-KD term. The feature MSE and
  NDAM terms are computed by local_losses.py (a hand-derived backward, every module in one call end to end);
  the study's other forms by ``local_loss_terms`` through autograd.
* **Progressive, shallow -> deep.** Module k's distillation weight ramps linearly from 0 to 1 over a window that
  starts ``ramp_stagger * k`` of the way into training and lasts ``ramp_length`` (fractions of training).
* **Teacher-fed inputs (optional, ``teacher_inputs_until``).** Early in training module k > 0 may run on the
  teacher's feature at module k-1's stage instead of the student's own (block-wise distillation): every module
  learns its mapping from clean inputs at once, before the chain is connected.
* **Backward modes.** ``joint``: one backward of the summed losses. ``local``: module k's loss is backpropagated
  as soon as module k has run, and its graph freed before module k+1 runs — same gradients, peak activation
  memory of one module instead of the whole network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from lakd.compiling import Compiled
from lakd.distill.base import Distiller, DistillParams, linear_warmup, register, weighted
from lakd.distill.dkd import dkd_loss
from lakd.distill.kd import kd_loss, standardise_logits
from lakd.distill.local_losses import LocalTermsRequest, fused_backward, fused_forward, fused_local_terms
from lakd.distill.ndam import NATIVE, accumulator, ndam_loss, spatial_weights
from lakd.errors import LakdError, short_repr
from lakd.models.adapter import check_gradient_isolation
from lakd.models.base import StagedModel
from lakd.models.frozen import TeacherOutputs
from lakd.models.registry import MODELS

FEAT_FORMS = ("mse", "channel_norm", "cosine")


def channel_standardise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel to zero mean / unit variance over (batch, H, W): a BatchNorm without parameters or memory."""
    return F.batch_norm(x, None, None, training=True, eps=eps)


def feature_loss(
    s: torch.Tensor, t: torch.Tensor, form: str = "mse", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Distance between projected student and teacher features (B, C, H, W), averaged over positions.

    ``mse``: mean squared error. ``channel_norm``: the same after ``channel_standardise`` of both sides, so every
    teacher channel counts equally whatever its scale. ``cosine``: ``1 - cos`` between the channel vectors at each
    position (scale-free per position). ``weights`` (B, 1, H, W) re-weights positions (mean 1).
    """
    if form == "mse" and weights is None:
        # In the inputs' dtype (bf16 under autocast) with a float32 sum: the only tensor saved for backward is the
        # difference, no float32 copy of either side (F.mse_loss would make both under autocast).
        return torch.linalg.vector_norm(s - t, dtype=accumulator(s)).square() / s.numel()
    s, t = s.float(), t.float()
    if form == "channel_norm":
        s, t = channel_standardise(s), channel_standardise(t)
    if form == "cosine":
        per_position = 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)[:, None]  # (B, 1, H, W)
        return (per_position * weights).mean() if weights is not None else per_position.mean()
    if weights is not None:
        return ((s - t).pow(2) * weights).mean()
    return F.mse_loss(s, t)


def pyramid_feature_loss(
    s: torch.Tensor, t: torch.Tensor, form: str, weights: torch.Tensor | None, scales: list[int]
) -> torch.Tensor:
    """``feature_loss`` averaged over grids: 0 = the native grid, n = both sides average-pooled to n x n.

    Coarse grids compare regional means, which a student can match even where it cannot match every position; a
    grid at least as fine as the map is the native grid (never up-sampled).
    """
    total = s.new_zeros(())
    for scale in scales:
        if scale == NATIVE or scale >= min(s.shape[-2:]):
            total = total + feature_loss(s, t, form, weights)
            continue
        grid = (scale, scale)
        w = F.adaptive_avg_pool2d(weights, grid) if weights is not None else None
        total = total + feature_loss(F.adaptive_avg_pool2d(s, grid), F.adaptive_avg_pool2d(t, grid), form, w)
    return total / len(scales)


def local_loss_terms(
    feat: torch.Tensor, s: torch.Tensor, t_feat: torch.Tensor, t_target: torch.Tensor,
    feat_on: bool, form: str, spatial: bool, feat_scales: list[int],
    ndam_on: bool, p: float, ndam_scales: list[int], mode: str, tau: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One module's unweighted feature loss (``s``, the projected ``feat``, against ``t_target``) and NDAM loss
    (``feat`` against ``t_feat``); ``None`` for a term that is off.

    Both in one function so that, compiled, one graph reads each feature once for both terms and writes one
    gradient for it instead of two passes and a sum of their gradients.
    """
    feat_term = nd_term = None
    if feat_on:
        h, w = min(s.shape[-2], t_target.shape[-2]), min(s.shape[-1], t_target.shape[-1])
        if s.shape[-2:] != (h, w):
            s = F.adaptive_avg_pool2d(s, (h, w))
        if t_target.shape[-2:] != (h, w):
            t_target = F.adaptive_avg_pool2d(t_target, (h, w))
        weights = spatial_weights(t_feat, (h, w), p) if spatial else None
        feat_term = pyramid_feature_loss(s, t_target, form, weights, feat_scales)
    if ndam_on:
        nd_term = ndam_loss(feat, t_feat, p, ndam_scales, mode, tau)
    return feat_term, nd_term


# A module is a list of pieces (stage index, first block, end block); ``None`` bounds = the whole stage.
Piece = tuple[int, int | None, int | None]


def _out_of_range(params: DistillParams, name: str, what: str) -> LakdError:
    return LakdError(f"distill.params.{name} = {short_repr(getattr(params, name))} is out of range: must be {what}")


@dataclass
class Params(DistillParams):
    """LAKD's core: every field is a part of the method in docs/method.md, with the default the evidence chose.

    The study variants (other feature/NDAM/logit forms, finer module splits) are the
    ``lakd-study`` method's extra fields (:class:`StudyParams`): kept, runnable, but not part of LAKD's contract.
    """

    # the last module's task terms
    ce_weight: float = 1.0  # CE on labels at the last module
    kd_weight: float = 0.0  # logit KD at the last module (0 = off; issue 6 round 5: off beat 0.9 with CE 0.1)
    temperature: float = 4.0  # of the logit KD term
    logit_stand: bool = False  # z-score both logits before the logit term (Sun et al. 2024; kd.standardise_logits)
    # each module's local losses against the teacher's matching stage
    feat_weight: float = 3.0  # feature MSE through a 1x1 conv + BN projector where widths differ (0 = off); 3: issue 6
    ndam_weight: float = 5.0  # NDAM loss: non-directional activation maps compared on several grids (0 = off)
    ndam_p: float = 2.0  # the map's exponent: mean over channels of |F|^p
    ndam_scales: list[int] = field(default_factory=lambda: [0, 4, 2])  # grids the maps are compared on; 0 = native
    aux_weight: float = 0.0  # CE of an auxiliary classifier on every intermediate module (0 = off)
    # linear: a pool + linear head per module; teacher_tail: the module's projected feature goes through the frozen
    # teacher's remaining stages and classifier (a task signal for every module, no gradient across a boundary)
    aux_head: str = "linear"
    # local modules (SDM) and how they are trained
    detach: bool = True  # SDM: no gradient across module boundaries (false = end-to-end, same losses)
    detach_until: float = 0.0  # SDM for this fraction of training, then end-to-end (1 = always, 0 = never): issue 6
    backward: str = "local"  # local (per-module backward: one module's graph alive) | joint (one backward)
    # block-wise start: module k > 0 runs on the teacher's stage k-1 output for this fraction of training (needs
    # SDM for as long); 0.3 in lakd-local (issue 16's study: best validation with local modules)
    teacher_inputs_until: float = 0.0
    # shallow -> deep
    progressive: bool = True  # module k's distillation weight ramps 0 -> 1, shallow modules first
    ramp_stagger: float = 0.1  # module k's ramp starts at k * ramp_stagger (fraction of training)
    ramp_length: float = 0.2  # ... and reaches full weight ramp_length later

    def validate(self) -> None:
        for name in ("ce_weight", "kd_weight", "feat_weight", "ndam_weight", "aux_weight"):
            if getattr(self, name) < 0:
                raise _out_of_range(self, name, ">= 0")
        for name in ("temperature", "ndam_p"):
            if getattr(self, name) <= 0:
                raise _out_of_range(self, name, "> 0")
        if not self.ndam_scales or any(s < 0 for s in self.ndam_scales):
            raise _out_of_range(self, "ndam_scales", "a non-empty list of grid sizes >= 1, or 0 for the native grid")
        if self.aux_head not in ("linear", "teacher_tail"):
            raise _out_of_range(self, "aux_head", "'linear' or 'teacher_tail'")
        if self.backward not in ("local", "joint"):
            raise _out_of_range(self, "backward", "'local' or 'joint'")
        if self.backward == "local" and not self.detach:
            raise LakdError("distill.params.backward = 'local' needs detach = true: without detached module "
                            "boundaries a module's loss reaches earlier modules; use backward = 'joint'")
        if not 0 <= self.detach_until <= 1:
            raise _out_of_range(self, "detach_until", "a fraction of training in [0, 1]")
        if not 0 <= self.ramp_stagger <= 1 or not 0 <= self.ramp_length <= 1:
            raise LakdError("distill.params.ramp_stagger and ramp_length are fractions of training: in [0, 1]")
        if not 0 <= self.teacher_inputs_until <= 1:
            raise _out_of_range(self, "teacher_inputs_until", "a fraction of training in [0, 1]")
        if self.teacher_inputs_until > (self.detach_until if self.detach else 0.0):
            raise LakdError(f"distill.params.teacher_inputs_until = {self.teacher_inputs_until} needs detached "
                            f"modules for that long (detach = true, detach_until >= teacher_inputs_until; now "
                            f"detach = {self.detach}, detach_until = {self.detach_until}): gradients cannot "
                            "reach the teacher's features")


@dataclass
class StudyParams(Params):
    """``lakd-study``: LAKD's core plus the variants issue 6's study tried and did not keep (docs/benchmarks.md
    records what each did). Same implementation; every field below at its default is exactly ``lakd``."""

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
        for name in ("dkd_alpha", "dkd_beta", "logit_warmup_epochs"):
            if getattr(self, name) < 0:
                raise _out_of_range(self, name, ">= 0")
        if self.ndam_tau <= 0:
            raise _out_of_range(self, "ndam_tau", "> 0")
        if self.feat_form not in FEAT_FORMS:
            raise _out_of_range(self, "feat_form", " | ".join(f"'{f}'" for f in FEAT_FORMS))
        if not self.feat_scales or any(s < 0 for s in self.feat_scales):
            raise _out_of_range(self, "feat_scales", "a non-empty list of grid sizes >= 1, or 0 for the native grid")
        if self.feat_target not in ("post", "preact"):
            raise _out_of_range(self, "feat_target", "'post' or 'preact'")
        if self.feat_projector not in ("auto", "always"):
            raise _out_of_range(self, "feat_projector", "'auto' or 'always'")
        if self.logit_loss not in ("kd", "dkd"):
            raise _out_of_range(self, "logit_loss", "'kd' or 'dkd'")
        if self.ndam_mode not in ("l2", "kl"):
            raise _out_of_range(self, "ndam_mode", "'l2' or 'kl'")
        if self.split not in ("stage", "block"):
            raise _out_of_range(self, "split", "'stage' or 'block'")


def module_pieces(student: StagedModel, arch: str | None, split: str) -> list[list[Piece]]:
    """The local modules of ``student``: a list of modules, each a list of (stage, first block, end block).

    One module per stage, unless the zoo model's registry entry groups its stages (VGG: its five pooling groups
    make three modules).
    """
    n = student.num_stages
    info = MODELS.get(arch or "")
    groups = [list(g) for g in info.local_modules] if info and info.local_modules else [[i] for i in range(n)]
    if sorted(i for g in groups for i in g) != list(range(n)):
        groups = [[i] for i in range(n)]
    if split == "stage":
        return [[(i, None, None) for i in g] for g in groups]
    if not student.runs_stage_by_stage:
        raise LakdError(f"distill.params.split = 'block' cuts stages into blocks, which needs a zoo student; "
                        f"'{student.arch_name}' is a hooked model: use split = 'stage' (or more stage paths)")
    modules: list[list[Piece]] = []
    for i in range(n):
        stage = student.stages[i]
        if not isinstance(stage, nn.Sequential):
            raise LakdError(f"distill.params.split = 'block' needs stages made of blocks (nn.Sequential); "
                            f"stage {i} of this student is a {type(stage).__name__}: use split = 'stage'")
        if len(stage) < 2:  # a one-block stage stays one module
            modules.append([(i, None, None)])
            continue
        mid = len(stage) // 2
        modules += [[(i, 0, mid)], [(i, mid, len(stage))]]
    return modules


class PiecesView(StagedModel):
    """A zoo student seen with one stage per piece (a whole stage or a range of its blocks), sharing its modules:
    a split finer than the student's stages runs through the same ``forward_cut`` as any other. Held outside the
    module tree (its parameters are the student's)."""

    def __init__(self, student: StagedModel, pieces: list[Piece]) -> None:
        super().__init__()
        self.stem, self.head, self.arch_name = student.stem, student.head, student.arch_name
        self.stages = nn.ModuleList(
            student.stages[i] if start is None else nn.Sequential(*list(student.stages[i])[start:end])
            for i, start, end in pieces)


def make_projector(c_in: int, c_out: int, always: bool = False) -> nn.Module:
    """1x1 conv + BN mapping student channels to teacher channels (training only; dropped at export).

    Equal widths get no projector unless ``always``: then the student matches a learned linear view of the
    teacher's feature instead of the feature itself, as FitNet's regressor and ReviewKD's fusion allow.
    """
    if c_in == c_out and not always:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class _TeacherInLockstep:
    """Runs the frozen teacher stage by stage, only as far as the current student module needs.

    Only the latest teacher feature is alive at any time (earlier ones are dropped as the teacher advances), so
    the teacher adds one stage's worth of memory, not all of its stage outputs.
    """

    def __init__(self, teacher: StagedModel, x: torch.Tensor, keep_preact: bool = False) -> None:
        self.teacher, self.h, self.pre, self.done = teacher, x, None, -1
        self.keep_preact = keep_preact  # hold the pre-activation too (one more stage tensor) only when asked

    @torch.no_grad()
    def feature(self, index: int) -> torch.Tensor:
        """The teacher's (post-activation) output of stage ``index``."""
        while self.done < index:
            if self.done < 0:
                self.h = self.teacher.stem(self.h)
            self.done += 1
            self.h, pre = self.teacher._stage_forward(self.done, self.h)
            self.pre = pre if self.keep_preact else None
        return self.h

    @torch.no_grad()
    def preact(self, index: int) -> torch.Tensor:
        """Stage ``index``'s output before its final ReLU (the output itself for families without one)."""
        if not self.keep_preact:
            raise RuntimeError("preact() needs keep_preact=True")
        self.feature(index)
        assert self.pre is not None
        return self.pre

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        self.feature(len(self.teacher.stages) - 1)
        return self.teacher.head(self.h).float()


class _TeacherAllAtOnce:
    """The same interface from one whole forward (``outputs``): every stage output kept until the step ends. For a
    hooked teacher (which cannot run stage by stage) and a compiled one (faster whole than in pieces)."""

    def __init__(self, outputs: Callable[[torch.Tensor], TeacherOutputs], x: torch.Tensor) -> None:
        self.outputs, self.x = outputs, x
        self.out: TeacherOutputs | None = None

    def _run(self) -> TeacherOutputs:
        if self.out is None:
            self.out = self.outputs(self.x)
        return self.out

    def feature(self, index: int) -> torch.Tensor:
        return self._run().posts[index]

    def preact(self, index: int) -> torch.Tensor:
        return self._run().pres[index]

    def logits(self) -> torch.Tensor:
        return self._run().logits


@contextlib.contextmanager
def _autocast_off(device_type: str) -> Any:
    """Backward outside autocast, also when it runs inside a forward (a hooked model's stage callback)."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


@register("lakd")
class LAKD(Distiller):
    Params = Params

    def __init__(
        self,
        student: StagedModel,
        teacher: StagedModel | None,
        params: Params | None = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        total_epochs: float = 1,
        arch: str | None = None,
    ) -> None:
        super().__init__(student, teacher, params, input_shape, total_epochs)
        # the local losses, replaced by a compiled function by compile_losses()
        self._local_loss_terms: Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]] = local_loss_terms
        self._fused_forward: Callable[..., Any] = fused_forward
        self._fused_backward: Callable[..., Any] = fused_backward
        # False: every form through autograd (the reference the fused losses are tested against)
        self.fused_local_losses = True
        # One implementation for both methods: a core Params is read as StudyParams at the variants' defaults.
        self.opts: StudyParams = (self.params if isinstance(self.params, StudyParams)
                                  else StudyParams(**dataclasses.asdict(self.params)))
        p = self.opts
        self.pieces = module_pieces(student, arch or student.arch_name, p.split)
        # the model forward_cut runs, and the stage that ends each module in it: the student and its pieces, or,
        # where a module is a range of blocks, a view of the student with one stage per piece
        flat = [piece for pieces in self.pieces for piece in pieces]
        view = PiecesView(student, flat) if any(start is not None for _, start, _ in flat) else None
        object.__setattr__(self, "_runner", view or student)  # not a submodule: its parameters are the student's
        ends = list(itertools.accumulate(len(pieces) for pieces in self.pieces)) if view else None
        self.module_of_stage = ({end - 1: k for k, end in enumerate(ends)} if ends
                                else {pieces[-1][0]: k for k, pieces in enumerate(self.pieces)})
        assert teacher is not None
        if not student.runs_stage_by_stage:
            if p.detach and p.detach_until > 0:  # local modules at some point: they must be independent
                check_gradient_isolation(student, input_shape)
        if not teacher.runs_stage_by_stage and p.aux_weight > 0 and p.aux_head == "teacher_tail":
            raise LakdError(f"distill.params.aux_head = 'teacher_tail' runs the teacher from a middle stage on, "
                            f"which needs a zoo teacher; '{teacher.arch_name}' is a hooked model: use "
                            "aux_head = 'linear'")
        out_shapes = self._module_output_shapes()
        t_shapes = self.teacher_shapes()
        num_modules = len(self.pieces)
        for index in p.feat_modules:
            if not -num_modules <= index < num_modules:
                raise LakdError(f"distill.params.feat_modules = {p.feat_modules} names module {index}, but this "
                                f"student has {num_modules} local modules: use 0..{num_modules - 1}, -1 = the last")
        self.feat_module_set = {i % num_modules for i in p.feat_modules} or set(range(num_modules))
        # Module k learns from the teacher stage at the same relative depth.
        self.teacher_index = [min(len(t_shapes) - 1, math.ceil((k + 1) * len(t_shapes) / num_modules) - 1)
                              for k in range(num_modules)]
        tail = p.aux_weight > 0 and p.aux_head == "teacher_tail"
        self.projectors = nn.ModuleList(  # a module without feature loss (or teacher tail) needs no projector
            make_projector(out_shapes[k][0], t_shapes[self.teacher_index[k]][0], p.feat_projector == "always")
            if k in self.feat_module_set or (tail and k < num_modules - 1)
            else nn.Identity() for k in range(num_modules)
        )
        if tail and any(self.teacher_index[k] >= len(t_shapes) - 1 for k in range(num_modules - 1)):
            raise LakdError("distill.params.aux_head = 'teacher_tail' needs a teacher stage after the one each "
                            f"intermediate module is matched to (modules -> teacher stages {self.teacher_index})")
        # Teacher-fed inputs (block-wise distillation): module k > 0 gets the teacher's feature at the stage
        # matching module k-1, adapted to module k-1's output shape (1x1 conv + BN only where widths differ).
        self.input_adapters = nn.ModuleList(
            [nn.Identity()] + [make_projector(t_shapes[self.teacher_index[k - 1]][0], out_shapes[k - 1][0])
                               for k in range(1, num_modules)]
        ) if p.teacher_inputs_until > 0 else nn.ModuleList()
        self.module_output_shapes = out_shapes
        num_classes = self.student_model.num_classes(self.input_shape)
        self.aux_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_shapes[k][0], num_classes))
            for k in range(num_modules - 1)
        ) if p.aux_weight > 0 and p.aux_head == "linear" else nn.ModuleList()
        self.teacher_grids = [tuple(shape[1:]) for shape in t_shapes]
        if p.feat_weight > 0 and p.feat_form == "channel_norm":
            grids = [min(out_shapes[k][1], t_shapes[self.teacher_index[k]][1]) * min(
                out_shapes[k][2], t_shapes[self.teacher_index[k]][2]) for k in self.feat_module_set]
            if 1 in p.feat_scales or 1 in grids:
                self.min_batch_size = 2
                self.min_batch_reason = ("feat_form 'channel_norm' standardises each channel over the batch and "
                                         "a 1x1 grid, which needs two samples")

    # -- structure ---------------------------------------------------------------------------------------
    @property
    def num_modules(self) -> int:
        return len(self.pieces)

    def _module_output_shapes(self) -> list[tuple[int, ...]]:
        stage_shapes = self.runner().stage_shapes(self.input_shape)
        return [tuple(stage_shapes[index]) for index in sorted(self.module_of_stage)]

    def run_module(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Module k of the student: (stem if k == 0) + its stages / block ranges. Returns its output feature."""
        if k == 0:
            h = self.student_model.stem(h)
        for stage_index, start, end in self.pieces[k]:
            stage = self.student_model.stages[stage_index]
            if start is None:
                h = stage(h)
            else:
                for block in list(stage)[start:end]:
                    h = block(h)
        return h

    # -- schedule ----------------------------------------------------------------------------------------
    def ramp(self, k: int, progress: float) -> float:
        """Distillation weight factor of module k at training ``progress`` (in [0, 1]): 0 -> 1, shallow first."""
        p = self.opts
        if not p.progressive:
            return 1.0
        t = progress
        start = p.ramp_stagger * k
        if p.ramp_length <= 0:
            return 1.0 if t >= start else 0.0
        return min(max((t - start) / p.ramp_length, 0.0), 1.0)

    def teacher_fed(self, progress: float) -> bool:
        """Whether modules k > 0 run on the teacher's features (instead of module k-1's output) at ``progress``."""
        p = self.opts
        return progress < p.teacher_inputs_until

    def teacher_input(self, k: int, t_prev: torch.Tensor) -> torch.Tensor:
        """The teacher's feature for module k's input: adapted to module k-1's output channels and grid."""
        h = self.input_adapters[k](t_prev)
        size = self.module_output_shapes[k - 1][1:]
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.adaptive_avg_pool2d(h, size) if h.shape[-1] > size[-1] else F.interpolate(h, size=size)
        return h

    def detached(self, progress: float) -> bool:
        """Whether module boundaries are cut (SDM) at ``progress``: ``detach`` until ``detach_until`` of training."""
        p = self.opts
        return p.detach and progress < p.detach_until

    # -- losses ------------------------------------------------------------------------------------------
    def logit_loss(self, logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The last module's logit term, before ``kd_weight``: Hinton KD or decoupled KD (DKD)."""
        p = self.opts
        if p.logit_stand:
            logits, t_logits = standardise_logits(logits), standardise_logits(t_logits)
        if p.logit_loss == "dkd":
            return dkd_loss(logits, t_logits, y, p.dkd_alpha, p.dkd_beta, p.temperature)
        return kd_loss(logits, t_logits, p.temperature)

    def module_losses(
        self, k: int, feat: torch.Tensor, t_feat: torch.Tensor, y: torch.Tensor, progress: float,
        t_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted local losses of module k (not including the last module's logit terms).

        ``t_feat`` is the teacher's stage output (NDAM, spatial weights); ``t_target`` what the feature loss
        matches (default ``t_feat``; the pre-activation output with ``feat_target: preact``).
        """
        losses = self.local_terms([(k, feat, t_feat, t_target)], progress)
        losses.update(self.aux_losses(k, feat, y))
        return losses

    def aux_losses(self, k: int, feat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Module k's auxiliary-classifier CE (intermediate modules, ``aux_weight > 0``)."""
        p = self.opts
        if p.aux_weight <= 0 or k >= self.num_modules - 1:
            return {}
        aux_logits = self.teacher_tail(k, feat) if p.aux_head == "teacher_tail" else self.aux_heads[k](feat)
        return {f"aux{k}": weighted(p.aux_weight, F.cross_entropy(aux_logits.float(), y))}

    def local_terms(
        self, modules: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]], progress: float
    ) -> dict[str, torch.Tensor]:
        """The weighted feature and NDAM losses of several modules, each ``(k, feat, t_feat, t_target)``.

        Features stay in their dtype (bf16 under autocast); each loss accumulates in float32 itself. The forms
        LAKD uses go through the fused losses (lakd.distill.local_losses: every module in one call, one
        elementwise backward per feature); the study's other forms through autograd (``local_loss_terms``).
        """
        p = self.opts
        scales = [NATIVE if g == 0 else g for g in p.ndam_scales]
        fusable_form = (self.fused_local_losses and p.feat_form == "mse" and not p.feat_spatial_weighting
                        and list(p.feat_scales) == [NATIVE])
        fused: list[tuple[int, LocalTermsRequest]] = []
        terms: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for k, feat, t_feat, t_target in modules:
            feat_on = p.feat_weight > 0 and k in self.feat_module_set
            ndam_on = p.ndam_weight > 0
            if not (feat_on or ndam_on):
                continue
            target = t_feat if t_target is None else t_target
            s = self.projectors[k](feat) if feat_on else feat
            if fusable_form and (not feat_on or s.shape == target.shape):
                fused.append((k, LocalTermsRequest(feat, s if s is not feat else None, target if feat_on else None,
                                                   t_feat if ndam_on else None)))
                continue
            terms[k] = self._local_loss_terms(
                feat, s, t_feat, target, feat_on, p.feat_form, p.feat_spatial_weighting, p.feat_scales, ndam_on,
                p.ndam_p, scales, p.ndam_mode, p.ndam_tau)
        if fused:
            values = fused_local_terms([r for _, r in fused], p.ndam_p, scales, p.ndam_mode, p.ndam_tau,
                                       self._fused_forward, self._fused_backward)
            terms.update((k, v) for (k, _), v in zip(fused, values, strict=True))
        losses: dict[str, torch.Tensor] = {}
        for k in sorted(terms):
            feat_term, nd_term = terms[k]
            ramp = self.ramp(k, progress)
            if feat_term is not None:
                losses[f"feat{k}"] = weighted(p.feat_weight * ramp, feat_term)
            if nd_term is not None:
                losses[f"ndam{k}"] = weighted(p.ndam_weight * ramp, nd_term)
        return losses

    def compile_losses(self) -> bool:
        """NDAM and the feature loss are many small ops per module (maps, pools, normalisations): compiled,
        the fused losses are one forward and one backward graph a step (docs/benchmarks.md)."""
        self._fused_forward = Compiled(fused_forward, "LAKD's local losses")
        self._fused_backward = Compiled(fused_backward, "LAKD's local loss gradients")
        self._local_loss_terms = Compiled(local_loss_terms, "LAKD's study loss forms")
        return True

    def teacher_source(self, x: torch.Tensor, keep_preact: bool) -> _TeacherInLockstep | _TeacherAllAtOnce:
        """Stage by stage for a zoo teacher run eagerly (one stage alive at a time); one whole forward for a
        hooked teacher and for a compiled one (``set_teacher_inference``)."""
        assert self.teacher is not None
        if self.teacher.runs_stage_by_stage and self._teacher_inference is None:
            return _TeacherInLockstep(self.teacher, x, keep_preact)
        return _TeacherAllAtOnce(self.teacher_outputs, x)

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

    def _forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        backward: Callable[[torch.Tensor], None] | None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's own forward, once (``forward_cut``: zoo and hooked students alike), with a callback at the
        last stage of each module that computes the module's losses and, in local mode (``backward`` given),
        backpropagates them at once, before the next module runs. The module's output then goes on detached (SDM),
        or, while teacher-fed, the teacher's feature at that module's stage goes on in its place. In joint mode
        (``backward`` None) every module's feature and NDAM terms are computed in one fused call at the end."""
        p = self.opts
        self.check_batch(x)
        ctx = autocast or contextlib.nullcontext
        detach, teacher_fed = self.detached(progress), self.teacher_fed(progress)
        teacher = self.teacher_source(x, keep_preact=p.feat_target == "preact")
        last = self.num_modules - 1
        module_of_stage = self.module_of_stage
        deferred: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        per_module: list[dict[str, torch.Tensor]] = []

        def on_stage(index: int, feat: torch.Tensor, _pre: torch.Tensor) -> None:
            k = module_of_stage.get(index)
            if k is None:
                return
            t_index = self.teacher_index[k]
            t_feat = teacher.feature(t_index)
            t_target = teacher.preact(t_index) if p.feat_target == "preact" else None
            if backward is None:
                deferred.append((k, feat, t_feat, t_target))
                module_losses = self.aux_losses(k, feat, y)
            else:
                module_losses = self.module_losses(k, feat, t_feat, y, progress, t_target)
            if k < last and backward is not None and module_losses:
                with _autocast_off(x.device.type):
                    backward(sum(module_losses.values()))
                module_losses = {name: v.detach() for name, v in module_losses.items()}
            per_module.append(module_losses)

        def cut(index: int) -> bool:
            return detach and module_of_stage.get(index, last) < last

        def substitute(index: int) -> torch.Tensor | None:
            k = module_of_stage.get(index, last)
            if not teacher_fed or k >= last:
                return None
            return self.teacher_input(k + 1, teacher.feature(self.teacher_index[k]))

        with ctx():
            logits = self.runner().forward_cut(x, on_stage, cut, substitute)
            last_losses = per_module[last]  # the last module's: backpropagated with CE and the logit term
            last_losses["ce"] = weighted(p.ce_weight, F.cross_entropy(logits.float(), y))
            if p.kd_weight > 0:
                factor = p.kd_weight * linear_warmup(self.epochs_done(progress), p.logit_warmup_epochs)
                last_losses["kd"] = weighted(factor, self.logit_loss(logits, teacher.logits(), y))
            local = self.local_terms(deferred, progress) if deferred else {}
        if backward is not None:
            backward(sum(last_losses.values()))
            per_module[last] = {name: v.detach() for name, v in last_losses.items()}
        losses: dict[str, torch.Tensor] = {}
        for k, module_losses in enumerate(per_module):  # module by module: feat, ndam, aux..., then ce, kd
            losses.update((name, v) for name, v in local.items() if name in (f"feat{k}", f"ndam{k}"))
            losses.update(module_losses)
        return logits, losses

    def runner(self) -> StagedModel:
        """The model whose ``forward_cut`` runs the student: the student itself, or a view of it with one stage per
        piece where a module is a range of blocks."""
        return self._runner  # type: ignore[no-any-return]

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All module losses with their graphs (joint mode); the trainer sums them and runs one backward."""
        return self._forward(x, y, progress, backward=None, autocast=None)

    def train_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
        backward: Callable[[torch.Tensor], None],
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        **batch: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's forward + backward, module by module (``local``) or all at once (``joint``).

        Once ``detach_until`` has passed, modules are no longer cut and one joint backward runs.
        """
        p = self.opts
        if p.backward == "local" and self.detached(progress):
            logits, losses = self._forward(x, y, progress, backward=backward, autocast=autocast)
            return logits.detach(), losses
        logits, losses = self._forward(x, y, progress, backward=None, autocast=autocast)
        backward(sum(losses.values()))
        return logits.detach(), {name: v.detach() for name, v in losses.items()}


@register("lakd-study")
class LAKDStudy(LAKD):
    """LAKD with the study variants' parameters (:class:`StudyParams`); ``lakd`` is its core at their defaults."""

    Params = StudyParams
