"""The distillation contract: a student, a frozen teacher, and named losses.

A ``Distiller`` is an ``nn.Module`` with

* ``forward_train(x, y, progress, **batch) -> (student logits, {loss name: scalar loss})``, ``progress`` the
  fraction of training done, in [0, 1] — every loss already
  weighted, so the trainer's job is only ``sum(losses.values()).backward()``;
* ``learnable_parameters()`` — the student plus any training-only modules (projectors, heads, memory-free
  embeddings); the teacher is never among them;
* ``student()`` — the model to evaluate, checkpoint and export.

The teacher is frozen: ``requires_grad_(False)``, always in eval mode (also after ``.train()``), run under
``torch.no_grad``, and left out of ``state_dict()`` (it lives in its own checkpoint).

Methods register with ``@register("name", "one-line summary")`` and declare their hyper-parameters as a dataclass
``Params`` so configs are validated field by field. A method never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from lakd.engine.step import Autocast, Backward, joint_step
from lakd.errors import LakdError
from lakd.models.adapter import user_model
from lakd.models.base import StagedModel
from lakd.models.frozen import FrozenForward, TeacherOutputs, all_outputs

TEACHER_PREFIX = "teacher."

@dataclasses.dataclass
class DistillParams:
    """Hyper-parameters every method has. Subclasses add their own fields (with published defaults)."""

    ce_weight: float = 1.0  # weight of cross-entropy on labels for the student logits

    def validate(self) -> None:
        check_non_negative("ce_weight", self.ce_weight)


class Distiller(nn.Module):
    """Base class: holds ``student_model`` and the frozen ``teacher``; subclasses implement ``forward_train``."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""  # set by @register
    Params: ClassVar[type[DistillParams]] = DistillParams
    #: True when ``forward_train`` needs the dataset index of each sample (``index=`` keyword), e.g. CRD.
    needs_index: ClassVar[bool] = False
    #: False only for methods that ignore the teacher (vanilla).
    requires_teacher: ClassVar[bool] = True
    #: Parameters at the value at which they do nothing: ones the method no longer has (a result that recorded one
    #: at that value still counts as made by the method as it is) or variants a result made before them did not
    #: record (lakd.bench.stale_difference).
    inert_params: ClassVar[dict[str, Any]] = {}
    #: The method that took over parameters this one no longer has (a recorded config naming them resolves there).
    params_moved_to: ClassVar[str | None] = None
    #: Old parameter names -> today's: a config with an old name gets an error naming the new one; a result that
    #: recorded the old name is read with the new one.
    renamed_params: ClassVar[dict[str, str]] = {}
    #: Smallest training batch the method can use (BatchNorm over a 1x1 map needs 2 samples); see check_batch.
    min_batch_size: int = 1

    def __init__(
        self,
        student: StagedModel,
        teacher: StagedModel | None,
        params: DistillParams | None = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        total_epochs: float = 1,
    ) -> None:
        super().__init__()
        self.student_model = student
        self.params = params if params is not None else self.Params()
        self.input_shape = input_shape
        self.total_epochs = total_epochs
        if teacher is None and self.requires_teacher:
            raise LakdError(f"distillation method '{self.name}' needs a teacher model")
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.teacher = teacher
        # how the teacher's no-grad forward runs (set_teacher_inference): eager until the run chooses otherwise
        self._teacher_inference: FrozenForward | None = None

    # -- the contract ------------------------------------------------------------------------------------
    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, **batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, backward: Backward,
        autocast: Autocast | None = None, **batch: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trainer's step contract (lakd.engine.step): forward under autocast, one backward of the sum.
        Methods that backpropagate in pieces (LAKD's local modules) override it and call ``_enter_step``."""
        self._enter_step(batch)
        return joint_step(self.forward_train, x, y, progress, backward, autocast, **batch)

    def _enter_step(self, batch: dict[str, Any]) -> None:
        """Take the step's context out of its keywords: ``epoch``, where the caller knows it (the trainer does)."""
        epoch = batch.pop("epoch", None)
        self._step_epoch = None if epoch is None else float(epoch)

    def epochs_done(self, progress: float) -> float:
        """Where this step is in epochs, for recipes whose warm-ups are stated in epochs: the step context's
        ``epoch`` (the trainer's), else ``progress`` times the ``epochs`` the distiller was built with (your own
        loop, which passes progress only)."""
        epoch = getattr(self, "_step_epoch", None)
        return epoch if epoch is not None else progress * self.total_epochs

    # -- the Python API (your own training loop) ----------------------------------------------------------
    @staticmethod
    def _checked(progress: float) -> float:
        if not 0.0 <= float(progress) <= 1.0:
            raise LakdError(f"progress must be the fraction of training done, in [0, 1]; got {progress}")
        return float(progress)

    def step(self, x: torch.Tensor, y: torch.Tensor, progress: float,
             autocast: Autocast | None = None, **batch: Any) -> torch.Tensor:
        """One training step's forward and backward (module by module where the method needs it); returns the
        total loss, detached. Zero the gradients before and step your optimizer after, as for ``loss.backward()``.
        ``progress``: fraction of training done, in [0, 1] (schedules and warm-ups follow it)."""
        self._check_loop_state()
        self._check_batch_inputs(x, y)
        _, losses = self.train_step(x, y, self._checked(progress), backward=lambda loss: loss.backward(),
                                    autocast=autocast, **batch)
        return sum(losses.values(), torch.zeros((), device=x.device))

    num_classes: int | None = None  # set by lakd.distiller: the pair's class count

    def _check_batch_inputs(self, x: Any, y: Any) -> None:
        """A batch from a hand-written loop: images (B, C, H, W) with the channels the models take, and labels that
        are class indices for this pair (one LakdError rather than a torch error deep in a loss)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise LakdError(f"step: images must be a float tensor (batch, channels, height, width), got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                            f"{' of ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")
        if x.shape[1] != self.input_shape[0]:
            raise LakdError(f"step: images have {x.shape[1]} channels, the models take {self.input_shape[0]} "
                            f"(input_shape {tuple(self.input_shape)})")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32) \
                or len(y) != len(x):
            raise LakdError(f"step: labels must be an integer tensor of {len(x)} class indices, got "
                            f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
                            f"{' of ' + str(y.dtype) if isinstance(y, torch.Tensor) else ''}")
        if self.num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise LakdError(f"step: labels run from {int(y.min())} to {int(y.max())}, but the models predict "
                            f"{self.num_classes} classes (labels 0 to {self.num_classes - 1})")

    def _check_loop_state(self) -> None:
        """What a hand-written loop gets wrong silently, said once each: a student left in eval mode (BatchNorm
        would train on running statistics), and an optimizer that does not hold the method's own parameters
        (projectors, heads: their gradients pile up untouched while the student's are stepped and cleared)."""
        import warnings

        warned = self.__dict__.setdefault("_warned", set())
        if not self.student_model.training and "eval" not in warned:
            warned.add("eval")
            warnings.warn(f"{self.name}: the student is in eval mode during a training step; call distiller.train() "
                          "first (the teacher stays in eval mode)", UserWarning, stacklevel=3)
        own = [p for n, p in self.named_parameters() if not n.startswith((TEACHER_PREFIX, "student_model."))]
        if "optimizer" in warned or not own:
            return
        stale = any(p.grad is not None and bool(p.grad.any()) for p in own)
        cleared = all(p.grad is None or not bool(p.grad.any()) for p in self.student_model.parameters())
        if stale and cleared:
            warned.add("optimizer")
            warnings.warn(f"{self.name}: the optimizer does not seem to hold the method's own parameters "
                          "(projectors / heads: their gradients were not cleared since the last step); build it on "
                          "distiller.learnable_parameters(), not student.parameters()", UserWarning, stacklevel=3)

    def forward(self, x: torch.Tensor, y: torch.Tensor, progress: float,
                **batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(student logits, {name: weighted loss})`` with graphs: sum and backpropagate them yourself. For LAKD
        this is the joint form (same gradients as ``step``, without its per-module memory saving)."""
        self._enter_step(batch)
        return self.forward_train(x, y, self._checked(progress), **batch)

    def check_batch(self, x: torch.Tensor) -> None:
        """A clear error for a batch smaller than the method can train on (instead of a BatchNorm traceback)."""
        if x.shape[0] < self.min_batch_size:
            raise LakdError(f"method '{self.name}' needs training batches of at least {self.min_batch_size} "
                            f"samples, got {x.shape[0]}: {self.min_batch_reason}; use a larger batch size")

    min_batch_reason: str = ""

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        for name, param in self.named_parameters():
            if not name.startswith(TEACHER_PREFIX):
                yield param

    def student(self) -> nn.Module:
        """The student to evaluate, checkpoint and export: the user's own module for a hooked student (its own
        state_dict keys and forward), the zoo model otherwise."""
        return user_model(self.student_model)

    # -- helpers for subclasses --------------------------------------------------------------------------
    def set_teacher_inference(self, forward: FrozenForward) -> None:
        """Run the teacher's no-grad forwards through ``forward`` (a folded or compiled copy of the teacher,
        lakd.models.frozen); stage-by-stage uses with gradients (a teacher tail) keep ``self.teacher``."""
        self._teacher_inference = forward

    def compile_losses(self) -> bool:
        """Compile the method's loss arithmetic (``distill.compile``; lakd.compiling). True if the method has any
        worth compiling: most losses are a few ops on logits, so the default compiles nothing."""
        return False

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> TeacherOutputs:
        """Teacher logits (fp32) and every stage's post- and pre-activation output, without a graph."""
        assert self.teacher is not None, f"method '{self.name}' needs a teacher"
        out = self._teacher_inference(x) if self._teacher_inference is not None else all_outputs(self.teacher, x)
        return TeacherOutputs(out.logits.float(), out.posts, out.pres)

    def teacher_forward(self, x: torch.Tensor, preact: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits and stage features (pre-activation if ``preact``), without a graph."""
        out = self.teacher_outputs(x)
        return out.logits, out.pres if preact else out.posts

    def student_shapes(self) -> list[tuple[int, int, int]]:
        return self.student_model.stage_shapes(self.input_shape)

    def teacher_shapes(self) -> list[tuple[int, int, int]]:
        assert self.teacher is not None
        return self.teacher.stage_shapes(self.input_shape)

    # -- frozen teacher plumbing -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Student + training-only modules; the teacher's weights are not repeated in every checkpoint."""
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state, strict=False, assign=assign)
        if strict:
            missing = [k for k in result.missing_keys if not k.startswith(TEACHER_PREFIX)]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"state does not match {type(self).__name__}: missing {missing[:5]}, "
                                   f"unexpected {result.unexpected_keys[:5]}")
        return result


DISTILLERS: dict[str, type[Distiller]] = {}


def register(name: str, summary: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a method available by ``name`` in configs and the CLI, with the one line that
    ``lakd distill --list-methods`` shows for it (who published it, what it matches)."""

    def wrap(cls: type[Distiller]) -> type[Distiller]:
        if name in DISTILLERS:
            raise ValueError(f"distillation method '{name}' registered twice")
        cls.name, cls.summary = name, summary
        DISTILLERS[name] = cls
        return cls

    return wrap


def weighted(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss`` in fp32 (losses computed under autocast are upcast before they are summed)."""
    return weight * loss.float()


def check_positive(name: str, value: float) -> None:
    """Range check for ``Params.validate``: ``distill.params.<name>`` must be > 0 and finite (NaN fails too)."""
    if not 0 < value < math.inf:
        raise LakdError(f"distill.params.{name} must be > 0 and finite, got {value}")


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1000.0  # published values run from CRD's 0.07 to 8; below 0.01 logits / T
# overflow bf16 and the softmax is a one-hot (no gradient), above 1000 it is uniform


def check_temperature(name: str, value: float) -> None:
    """Range check for a softmax temperature: in [0.01, 1000] (NaN fails too)."""
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise LakdError(f"distill.params.{name} must be in [{MIN_TEMPERATURE}, "
                        f"{MAX_TEMPERATURE:g}], got {value}")


def check_non_negative(name: str, value: float) -> None:
    """Range check for ``Params.validate``: ``distill.params.<name>`` must be >= 0 and finite (NaN fails too)."""
    if not 0 <= value < math.inf:
        raise LakdError(f"distill.params.{name} must be >= 0 and finite, got {value}")


def linear_warmup(epoch: float, warmup_epochs: float) -> float:
    """Loss warm-up factor at (fractional, 0-based) ``epoch``: mdistiller's rule for whole-epoch warm-ups.

    mdistiller (DKD, ReviewKD) numbers epochs from 1 and uses ``min(epoch / warmup, 1)``, constant within an
    epoch: with ``warmup_epochs`` 20 the first epoch gets 1/20 and epoch 20 on gets 1. We do exactly that when
    ``warmup_epochs >= 1``. A warm-up shorter than one epoch (short CPU budgets) has no published analogue; it
    ramps continuously from 0 to 1 over that fraction of the first epoch. 0 means no warm-up.
    """
    if warmup_epochs <= 0:
        return 1.0
    if warmup_epochs >= 1:
        return min((math.floor(max(epoch, 0.0)) + 1) / warmup_epochs, 1.0)
    return min(max(epoch / warmup_epochs, 0.0), 1.0)

