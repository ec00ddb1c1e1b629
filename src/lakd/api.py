"""The Python API: distil any pair of models inside your own training loop, without lakd's trainer.

    import lakd
    distiller = lakd.distiller("lakd", student, teacher, input_shape=(3, 224, 224), epochs=30)
    optimizer = torch.optim.SGD(distiller.learnable_parameters(), lr=0.05, momentum=0.9)
    for epoch in range(30):
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = distiller.step(x, y, progress=(epoch + i / len(loader)) / 30)
            optimizer.step()
    torch.save(distiller.student().state_dict(), "student.pt")   # your own module, its own keys

``student`` and ``teacher`` are zoo models, torchvision / timm models (preset stages) or any ``nn.Module`` with
``stages=[module paths]``. ``step`` runs forward and backward (LAKD's local modules backpropagate module by
module); ``distiller(x, y, progress)`` returns ``(logits, {name: loss})`` with graphs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lakd.distill import build_distiller
from lakd.distill.base import Distiller
from lakd.errors import LakdError
from lakd.models.adapter import HookedModel, StageSpec
from lakd.models.base import StagedModel
from lakd.models.presets import spec_for

StagesArg = StageSpec | Sequence[str] | dict[str, Any] | None


def staged(model: nn.Module, stages: StagesArg = None, role: str = "model") -> StagedModel:
    """``model`` as the distillers see it: zoo models as they are; torchvision / timm models with their preset
    stages unless ``stages`` is given; any other module through ``stages`` (module paths, in forward order)."""
    if isinstance(model, StagedModel):
        if stages is not None and not isinstance(model, HookedModel):
            raise LakdError(f"the {role} is a lakd zoo model, which has its stages already: leave out its stages")
        return model
    if not isinstance(model, nn.Module):
        raise LakdError(f"the {role} must be a torch.nn.Module, got {type(model).__name__}")
    if stages is not None:
        return HookedModel(model, stages, name=type(model).__name__)
    library = type(model).__module__.split(".", 1)[0]
    if library in ("torchvision", "timm"):
        return HookedModel(model, spec_for(model, library, type(model).__name__), name=f"{library}:"
                           f"{type(model).__name__}")
    raise LakdError(f"the {role} ({type(model).__name__}) is not a zoo, torchvision or timm model, so lakd cannot "
                    f"guess its stages: pass {role}_stages=[module paths whose outputs are its stages], e.g. "
                    "['layer1', 'layer2', 'layer3'] (names from model.named_modules())")


def plain_or_staged(model: nn.Module, stages: StagesArg, role: str, needs_stages: bool) -> nn.Module:
    """``staged(model)`` when the model is distilled (``needs_stages``) or its stages are known; otherwise (a plain
    module trained on labels) the module itself, which needs no stages."""
    if needs_stages or stages is not None or isinstance(model, StagedModel):
        return staged(model, stages, role)
    if not isinstance(model, nn.Module):
        raise LakdError(f"the {role} must be a torch.nn.Module, got {type(model).__name__}")
    try:
        return staged(model, None, role)
    except LakdError:
        return model


def _check_pair(student: StagedModel, teacher: StagedModel | None, input_shape: tuple[int, ...]) -> int:
    """The pair checked at construction, whatever the method: two different modules that run on ``input_shape``
    and predict the same number of classes (a raw torch error, or nothing at all, otherwise)."""
    from lakd.models.adapter import user_model
    from lakd.models.base import check_input_size, probe_logits

    if not (isinstance(input_shape, tuple) and len(input_shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in input_shape)):
        raise LakdError(f"input_shape must be one image's (channels, height, width), each in 1..4096; got "
                        f"{input_shape!r}")
    if teacher is not None and user_model(student) is user_model(teacher):
        raise LakdError("the student and the teacher are the same module: distil into a separate student (e.g. "
                        "copy.deepcopy(teacher), or a smaller model)")
    check_input_size(student, "student", input_shape)  # type: ignore[arg-type]
    ns = int(probe_logits(student, input_shape).shape[1])  # type: ignore[arg-type]
    if teacher is None:
        return ns
    check_input_size(teacher, "teacher", input_shape)  # type: ignore[arg-type]
    nt = int(probe_logits(teacher, input_shape).shape[1])  # type: ignore[arg-type]
    if ns != nt:
        raise LakdError(f"the student predicts {ns} classes but the teacher {nt}: both need the same classes (give "
                        f"the student a {nt}-way head, or fine-tune the teacher to {ns} classes first)")
    return ns


def distiller(
    method: str,
    student: nn.Module,
    teacher: nn.Module | None = None,
    *,
    student_stages: StagesArg = None,
    teacher_stages: StagesArg = None,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    epochs: float = 1.0,
    train_labels: torch.Tensor | Sequence[int] | None = None,
    **params: Any,
) -> Distiller:
    """Method ``method`` (see ``lakd.distill.list_methods()``) for this pair, with its published defaults and
    ``params`` on top (validated: an unknown name or a bad value is a ``LakdError``).

    ``input_shape``: one training image (C, H, W), used to declare stage shapes and build projectors.
    ``epochs``: the length of training that ``progress`` = 1 stands for (warm-ups given in epochs use it).
    ``train_labels``: the training set's labels, for methods that keep per-sample state (CRD), in the order of
    the ``index=`` you pass to ``step``.
    """
    s = staged(student, student_stages, "student")
    t = staged(teacher, teacher_stages, "teacher") if teacher is not None else None
    classes = _check_pair(s, t, tuple(input_shape))
    if not (isinstance(epochs, (int, float)) and 0 < epochs < float("inf")):
        raise LakdError(f"epochs must be a positive number, got {epochs!r}")
    labels = torch.as_tensor(train_labels) if train_labels is not None else None
    # the progress -> epoch mapping of step() uses total_epochs; integral counts keep epoch-based warm-ups exact
    built = build_distiller(method, s, t, params, input_shape=tuple(input_shape), total_epochs=epochs,  # type: ignore[arg-type]
                            train_labels=labels)
    built.num_classes = classes  # step() checks its batches against it
    return built
