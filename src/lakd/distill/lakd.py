"""LAKD — Local Attention Knowledge Distillation (arXiv 2408.11478), as *we* read it: the method's core.

Only the paper's abstract is public; every choice below is ours, documented part by part (each parameter with the
evidence behind its default) in docs/method.md. The variants a study tried and did not keep live apart, in
``lakd-study`` (lakd_study.py), which overrides this class's named hooks; nothing here branches on them.

* **SDM — local modules with independent gradients.** The student's stages are grouped into K modules (one per
  stage, unless the model's registry entry groups them; the stem joins module 0, pool + classifier module K-1).
  Module k+1 receives module k's output *detached*, so no gradient crosses a module boundary.
* **Local losses.** Module k is taught by the teacher's matching stage: a feature MSE (through a 1x1 conv + BN
  projector where channels differ, pooled to the coarser grid where resolutions differ) and an NDAM loss (ndam.py);
  both computed by local_losses.py (a hand-derived backward, every module in one call end to end). The last module
  also has ``ce_weight * CE`` and, optionally, a logit-KD term.
* **Progressive, shallow -> deep.** Module k's distillation weight ramps linearly from 0 to 1 over a window that
  starts ``ramp_stagger * k`` of the way into training and lasts ``ramp_length`` (fractions of training).
* **Teacher-fed inputs (optional, ``teacher_inputs_until``).** Early in training module k > 0 may run on the
  teacher's feature at module k-1's stage instead of the student's own (block-wise distillation).
* **Backward modes.** ``joint``: one backward of the summed losses. ``local``: module k's loss is backpropagated
  as soon as module k has run, and its graph freed before module k+1 runs — same gradients, peak activation
  memory of one module instead of the whole network.

One forward path for every student: the student's own ``forward_cut`` (zoo and hooked models alike) with a
callback at the last stage of each module.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lakd.compiling import Compiled
from lakd.distill.base import MAX_TEMPERATURE, MIN_TEMPERATURE, Distiller, DistillParams, register, weighted
from lakd.distill.kd import kd_loss
from lakd.distill.local_losses import (
    LocalTermsRequest,
    fused_backward,
    fused_forward,
    fused_local_terms,
    local_loss_terms,
)
from lakd.distill.ndam import NATIVE
from lakd.errors import LakdError, short_repr
from lakd.models.adapter import check_gradient_isolation
from lakd.models.base import StagedModel
from lakd.models.frozen import TeacherOutputs
from lakd.models.registry import MODELS

# A module is a list of pieces (stage index, first block, end block); ``None`` bounds = the whole stage.
Piece = tuple[int, int | None, int | None]
LocalRequest = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]  # (k, feat, t_feat, t_target or None)


@dataclass(frozen=True)
class LossForms:
    """How the local losses are computed: LAKD's own forms (``CORE_FORMS``), or a study variant's."""

    feat_form: str = "mse"  # mse | channel_norm | cosine (local_losses.feature_loss)
    feat_spatial_weighting: bool = False  # positions weighted by the teacher's NDAM map
    feat_scales: tuple[int, ...] = (NATIVE,)  # grids the feature loss averages over
    ndam_mode: str = "l2"  # l2 | kl (local_losses.map_loss)
    ndam_tau: float = 1.0  # kl's temperature

    @property
    def feat_fusable(self) -> bool:
        """Whether the fused losses compute this feature form (they do every NDAM form)."""
        return self.feat_form == "mse" and not self.feat_spatial_weighting and list(self.feat_scales) == [NATIVE]


CORE_FORMS = LossForms()


def out_of_range(params: DistillParams, name: str, what: str) -> LakdError:
    return LakdError(f"distill.params.{name} = {short_repr(getattr(params, name))} is out of range: must be {what}")


@dataclass
class Params(DistillParams):
    """LAKD's core: every field is a part of the method in docs/method.md, with the default the evidence chose."""

    # the last module's task terms
    ce_weight: float = 1.0  # CE on labels at the last module
    kd_weight: float = 0.0  # logit KD at the last module (0 = off; issue 6 round 5: off beat 0.9 with CE 0.1)
    temperature: float = 4.0  # of the logit KD term
    # each module's local losses against the teacher's matching stage
    feat_weight: float = 3.0  # feature MSE through a 1x1 conv + BN projector where widths differ (0 = off); 3: issue 6
    ndam_weight: float = 5.0  # NDAM loss: non-directional activation maps compared on several grids (0 = off)
    ndam_p: float = 2.0  # the map's exponent: mean over channels of |F|^p
    ndam_scales: list[int] = field(default_factory=lambda: [0, 4, 2])  # grids the maps are compared on; 0 = native
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
        for name in ("ce_weight", "kd_weight", "feat_weight", "ndam_weight"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too
                raise out_of_range(self, name, ">= 0 and finite")
        if not 0 < self.ndam_p < math.inf:
            raise out_of_range(self, "ndam_p", "> 0 and finite")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # the logit term's softmax temperature
            raise out_of_range(self, "temperature", f"in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}]")
        if not self.ndam_scales or any(s < 0 for s in self.ndam_scales):
            raise out_of_range(self, "ndam_scales", "a non-empty list of grid sizes >= 1, or 0 for the native grid")
        if self.backward not in ("local", "joint"):
            raise out_of_range(self, "backward", "'local' or 'joint'")
        if self.backward == "local" and not self.detach:
            raise LakdError("distill.params.backward = 'local' needs detach = true: without detached module "
                            "boundaries a module's loss reaches earlier modules; use backward = 'joint'")
        if not 0 <= self.detach_until <= 1:
            raise out_of_range(self, "detach_until", "a fraction of training in [0, 1]")
        if not 0 <= self.ramp_stagger <= 1 or not 0 <= self.ramp_length <= 1:
            raise LakdError("distill.params.ramp_stagger and ramp_length are fractions of training: in [0, 1]")
        if not 0 <= self.teacher_inputs_until <= 1:
            raise out_of_range(self, "teacher_inputs_until", "a fraction of training in [0, 1]")
        if self.teacher_inputs_until > (self.detach_until if self.detach else 0.0):
            raise LakdError(f"distill.params.teacher_inputs_until = {self.teacher_inputs_until} needs detached "
                            f"modules for that long (detach = true, detach_until >= teacher_inputs_until; now "
                            f"detach = {self.detach}, detach_until = {self.detach_until}): gradients cannot "
                            "reach the teacher's features")


def module_pieces(student: StagedModel, arch: str | None) -> list[list[Piece]]:
    """The local modules of ``student``: a list of modules, each a list of whole stages ``(stage, None, None)``.

    One module per stage, unless the zoo model's registry entry groups its stages (VGG: its five pooling groups
    make three modules).
    """
    n = student.num_stages
    info = MODELS.get(arch or "")
    groups = [list(g) for g in info.local_modules] if info and info.local_modules else [[i] for i in range(n)]
    if sorted(i for g in groups for i in g) != list(range(n)):
        groups = [[i] for i in range(n)]
    return [[(i, None, None) for i in g] for g in groups]


def untied_adapters_warning(modules: list[int], until: float) -> str:
    """Why a teacher-fed start with learned input adapters is risky: nothing ties an adapter's output to the
    student's own output at that point, so the chain can fail when it takes over (measured in
    docs/benchmarks-cifar100.md, VGG-13 -> MobileNetV2)."""
    which = ", ".join(str(k) for k in modules)
    return (f"lakd: teacher_inputs_until={until:g} with teacher and student widths that differ: module(s) {which} "
            "train on a learned 1x1 adapter of the teacher's features that nothing ties to the previous module's "
            "own output. On VGG-13 -> MobileNetV2 (CIFAR-100, seed 0) the student's own chain stayed at chance "
            "while teacher-fed and ended at 19.7 % against 38.6 % end to end. Watch validation accuracy after "
            f"{until:.0%} of training, or set distill.params.teacher_inputs_until=0 to keep every module on the "
            "student's own chain.")


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


@register("lakd", "LAKD (ours, docs/method.md): local modules, feature + NDAM losses per module, shallow -> deep")
class LAKD(Distiller):
    """LAKD's core. The hooks a variant overrides (lakd_study.py): ``local_modules``, ``make_runner``,
    ``feature_modules``, ``needs_projector``, ``projector_always``, ``feature_target_preact``, ``logit_loss``,
    ``logit_factor``, ``aux_losses``, ``loss_forms``."""

    Params = Params
    params: Params
    #: Parameters that left the core for ``lakd-study`` (issue 32), each with the value at which it did nothing: a
    #: result that recorded one at that value was made by what the core computes today.
    inert_params: ClassVar[dict[str, Any]] = {"logit_stand": False, "aux_weight": 0.0, "aux_head": "linear"}
    params_moved_to: ClassVar[str | None] = "lakd-study"

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
        # the local losses, replaced by compiled functions by compile_losses()
        self._local_loss_terms: Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]] = local_loss_terms
        self._fused_forward: Callable[..., Any] = fused_forward
        self._fused_backward: Callable[..., Any] = fused_backward
        # False: every form through autograd (the reference the fused losses are tested against)
        self.fused_local_losses = True
        p = self.params
        assert teacher is not None
        self.pieces = self.local_modules(student, arch or student.arch_name)
        runner, self.module_of_stage = self.make_runner()
        object.__setattr__(self, "_runner", runner)  # not a submodule: its parameters are the student's
        if not student.runs_stage_by_stage and p.detach and p.detach_until > 0:
            check_gradient_isolation(student, input_shape)  # local modules at some point: they must be independent
        out_shapes = self._module_output_shapes()
        t_shapes = self.teacher_shapes()
        num_modules = len(self.pieces)
        self.feat_module_set = self.feature_modules()
        # Module k learns from the teacher stage at the same relative depth.
        self.teacher_index = [min(len(t_shapes) - 1, math.ceil((k + 1) * len(t_shapes) / num_modules) - 1)
                              for k in range(num_modules)]
        self.projectors = nn.ModuleList(  # a module without feature loss needs no projector
            make_projector(out_shapes[k][0], t_shapes[self.teacher_index[k]][0], self.projector_always())
            if self.needs_projector(k) else nn.Identity() for k in range(num_modules)
        )
        # Teacher-fed inputs (block-wise distillation): module k > 0 gets the teacher's feature at the stage
        # matching module k-1, adapted to module k-1's output shape (1x1 conv + BN only where widths differ).
        self.input_adapters = nn.ModuleList(
            [nn.Identity()] + [make_projector(t_shapes[self.teacher_index[k - 1]][0], out_shapes[k - 1][0])
                               for k in range(1, num_modules)]
        ) if p.teacher_inputs_until > 0 else nn.ModuleList()
        self.module_output_shapes = out_shapes
        learned = [k for k, adapter in enumerate(self.input_adapters) if not isinstance(adapter, nn.Identity)]
        if learned:
            warnings.warn(untied_adapters_warning(learned, p.teacher_inputs_until), stacklevel=2)

    # -- hooks a variant overrides (lakd_study.py) ------------------------------------------------------------
    def local_modules(self, student: StagedModel, arch: str | None) -> list[list[Piece]]:
        """The modules: one per stage, or the registry's grouping of stages."""
        return module_pieces(student, arch)

    def make_runner(self) -> tuple[StagedModel, dict[int, int]]:
        """The model whose ``forward_cut`` runs the student, and which of its stages ends which module."""
        return self.student_model, {pieces[-1][0]: k for k, pieces in enumerate(self.pieces)}

    def feature_modules(self) -> set[int]:
        """The modules that get the feature loss: all."""
        return set(range(self.num_modules))

    def needs_projector(self, k: int) -> bool:
        return k in self.feat_module_set

    def projector_always(self) -> bool:
        """Whether equal widths get a projector too (no: the student matches the teacher's feature itself)."""
        return False

    def feature_target_preact(self) -> bool:
        """Whether the feature loss matches the teacher stage's pre-activation output (no: its output)."""
        return False

    def logit_loss(self, logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The last module's logit term, before its weight: Hinton's KD."""
        return kd_loss(logits, t_logits, self.params.temperature)

    def logit_factor(self, progress: float) -> float:
        """The logit term's weight at ``progress``."""
        return self.params.kd_weight

    def aux_losses(self, k: int, feat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Module k's extra task losses (none in the core)."""
        return {}

    def loss_forms(self) -> LossForms:
        """The forms of the local losses: the feature MSE on the native grid and NDAM's L2 distance."""
        return CORE_FORMS

    def raw_local_terms(
        self, modules: list[LocalRequest]
    ) -> dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Per module, its unweighted feature and NDAM terms (``None`` where off): the fused losses where they
        cover the forms and the projected feature and its target share a grid, the autograd reference elsewhere."""
        p, forms = self.params, self.loss_forms()
        scales = [NATIVE if g == 0 else g for g in p.ndam_scales]
        fusable = self.fused_local_losses and forms.feat_fusable
        fused: list[tuple[int, LocalTermsRequest]] = []
        terms: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for k, feat, t_feat, t_target in modules:
            feat_on = p.feat_weight > 0 and k in self.feat_module_set
            ndam_on = p.ndam_weight > 0
            if not (feat_on or ndam_on):
                continue
            target = t_feat if t_target is None else t_target
            s = self.projectors[k](feat) if feat_on else feat
            if fusable and (not feat_on or s.shape == target.shape):
                fused.append((k, LocalTermsRequest(feat, s if s is not feat else None, target if feat_on else None,
                                                   t_feat if ndam_on else None)))
                continue
            terms[k] = self._local_loss_terms(
                feat, s, t_feat, target, feat_on, forms.feat_form, forms.feat_spatial_weighting, forms.feat_scales,
                ndam_on, p.ndam_p, scales, forms.ndam_mode, forms.ndam_tau)
        if fused:
            values = fused_local_terms([r for _, r in fused], p.ndam_p, scales, forms.ndam_mode, forms.ndam_tau,
                                       self._fused_forward, self._fused_backward)
            terms.update((k, v) for (k, _), v in zip(fused, values, strict=True))
        return terms

    # -- structure ---------------------------------------------------------------------------------------
    @property
    def num_modules(self) -> int:
        return len(self.pieces)

    def _module_output_shapes(self) -> list[tuple[int, ...]]:
        stage_shapes = self.runner().stage_shapes(self.input_shape)
        return [tuple(stage_shapes[index]) for index in sorted(self.module_of_stage)]

    def runner(self) -> StagedModel:
        """The model whose ``forward_cut`` runs the student (the student itself, unless a variant's split is finer
        than its stages)."""
        return self._runner  # type: ignore[no-any-return]

    def run_module(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Module k of a zoo student alone, on ``h`` (stem included for k == 0): for inspection and tests."""
        if k == 0:
            h = self.student_model.stem(h)
        for stage_index, start, end in self.pieces[k]:
            stage = self.student_model.stages[stage_index]
            for block in ([stage] if start is None else list(stage)[start:end]):
                h = block(h)
        return h

    # -- schedule ----------------------------------------------------------------------------------------
    def ramp(self, k: int, progress: float) -> float:
        """Distillation weight factor of module k at training ``progress`` (in [0, 1]): 0 -> 1, shallow first."""
        p = self.params
        if not p.progressive:
            return 1.0
        start = p.ramp_stagger * k
        if p.ramp_length <= 0:
            return 1.0 if progress >= start else 0.0
        return min(max((progress - start) / p.ramp_length, 0.0), 1.0)

    def teacher_fed(self, progress: float) -> bool:
        """Whether modules k > 0 run on the teacher's features (instead of module k-1's output) at ``progress``."""
        return progress < self.params.teacher_inputs_until

    def teacher_input(self, k: int, t_prev: torch.Tensor) -> torch.Tensor:
        """The teacher's feature for module k's input: adapted to module k-1's output channels and grid."""
        h = self.input_adapters[k](t_prev)
        size = self.module_output_shapes[k - 1][1:]
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.adaptive_avg_pool2d(h, size) if h.shape[-1] > size[-1] else F.interpolate(h, size=size)
        return h

    def detached(self, progress: float) -> bool:
        """Whether module boundaries are cut (SDM) at ``progress``: ``detach`` until ``detach_until`` of training."""
        return self.params.detach and progress < self.params.detach_until

    # -- losses ------------------------------------------------------------------------------------------
    def module_losses(
        self, k: int, feat: torch.Tensor, t_feat: torch.Tensor, y: torch.Tensor, progress: float,
        t_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted local losses of module k (not including the last module's logit terms).

        ``t_feat`` is the teacher's stage output (NDAM); ``t_target`` what the feature loss matches (default
        ``t_feat``).
        """
        losses = self.local_terms([(k, feat, t_feat, t_target)], progress)
        losses.update(self.aux_losses(k, feat, y))
        return losses

    def local_terms(self, modules: list[LocalRequest], progress: float) -> dict[str, torch.Tensor]:
        """The weighted feature and NDAM losses of several modules, each ``(k, feat, t_feat, t_target)``.

        Features stay in their dtype (bf16 under autocast); each loss accumulates in float32 itself.
        """
        p = self.params
        terms = self.raw_local_terms(modules)
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
        the fused losses are one forward and one backward graph a step (docs/studies/speed.md)."""
        self._fused_forward = Compiled(fused_forward, "LAKD's local losses")
        self._fused_backward = Compiled(fused_backward, "LAKD's local loss gradients")
        self._local_loss_terms = Compiled(local_loss_terms, "LAKD's reference loss forms")
        return True

    def teacher_source(self, x: torch.Tensor, keep_preact: bool) -> _TeacherInLockstep | _TeacherAllAtOnce:
        """Stage by stage for a zoo teacher run eagerly (one stage alive at a time); one whole forward for a
        hooked teacher and for a compiled one (``set_teacher_inference``)."""
        assert self.teacher is not None
        if self.teacher.runs_stage_by_stage and self._teacher_inference is None:
            return _TeacherInLockstep(self.teacher, x, keep_preact)
        return _TeacherAllAtOnce(self.teacher_outputs, x)

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
        p = self.params
        self.check_batch(x)
        ctx = autocast or contextlib.nullcontext
        detach, teacher_fed = self.detached(progress), self.teacher_fed(progress)
        teacher = self.teacher_source(x, keep_preact=self.feature_target_preact())
        last = self.num_modules - 1
        module_of_stage = self.module_of_stage
        deferred: list[LocalRequest] = []
        per_module: list[dict[str, torch.Tensor]] = []

        def on_stage(index: int, feat: torch.Tensor, _pre: torch.Tensor) -> None:
            k = module_of_stage.get(index)
            if k is None:
                return
            t_index = self.teacher_index[k]
            t_feat = teacher.feature(t_index)
            t_target = teacher.preact(t_index) if self.feature_target_preact() else None
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
                last_losses["kd"] = weighted(self.logit_factor(progress), self.logit_loss(logits, teacher.logits(), y))
            local = self.local_terms(deferred, progress) if deferred else {}
        if backward is not None:
            backward(sum(last_losses.values()))
            per_module[last] = {name: v.detach() for name, v in last_losses.items()}
        losses: dict[str, torch.Tensor] = {}
        for k, module_losses in enumerate(per_module):  # module by module: feat, ndam, aux..., then ce, kd
            losses.update((name, v) for name, v in local.items() if name in (f"feat{k}", f"ndam{k}"))
            losses.update(module_losses)
        return logits, losses

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
        self._enter_step(batch)
        p = self.params
        if p.backward == "local" and self.detached(progress):
            logits, losses = self._forward(x, y, progress, backward=backward, autocast=autocast)
            return logits.detach(), losses
        logits, losses = self._forward(x, y, progress, backward=None, autocast=autocast)
        backward(sum(losses.values()))
        return logits.detach(), {name: v.detach() for name, v in losses.items()}
