"""The one shape every zoo model has, so that distillers can cut it into local modules.

A model is ``stem -> stages[0] -> ... -> stages[-1] -> head``. ``forward`` returns the logits and one feature per
stage. Distillation methods (FitNet, AT, LAKD's local modules, ...) only ever use this interface, never the
internals of a family.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lakd.errors import LakdError, first_line


class StagedModel(nn.Module):
    """Base class: subclasses set ``stem``, ``stages`` and ``head`` in ``__init__``.

    * ``stem``: input -> input of ``stages[0]`` (may be ``nn.Identity``).
    * ``stages``: ``nn.ModuleList``; the natural resolution stages of the family.
    * ``head``: last stage's (post-activation) output -> logits (pool + flatten + linear).

    Families whose stages end in a ReLU can return the pre-activation output too: they override
    ``_stage_forward`` to return ``(out, preact)``.
    """

    stem: nn.Module
    stages: nn.ModuleList
    head: nn.Module
    arch_name: str | None = None  # registry name, set by build_model
    #: True: ``stem`` / ``stages`` / ``head`` can be run one by one (the zoo); False: a hooked model (adapter.py)
    runs_stage_by_stage = True

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def prepend_input_transform(self, transform: nn.Module) -> None:
        """Run ``transform`` on every input before the model (every path in, stage-by-stage runs included)."""
        self.stem = nn.Sequential(transform, self.stem)

    def forward_cut(self, x: torch.Tensor, on_stage: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                    cut: Callable[[int], bool] | None = None,
                    substitute: Callable[[int], torch.Tensor | None] | None = None) -> torch.Tensor:
        """Logits; after stage i, ``on_stage(i, output, pre-activation output)``; then, if ``substitute(i)`` gives
        a map, the forward goes on from that map instead of the output (LAKD's teacher-fed inputs), else, if
        ``cut(i)``, the output continues detached. The contract hooked models share (LAKD on any model,
        ReviewKD's levels)."""
        h = self.stem(x)
        for i in range(len(self.stages)):
            h, pre = self._stage_forward(i, h)
            if on_stage is not None:
                on_stage(i, h, pre)
            replacement = substitute(i) if substitute is not None else None
            if replacement is not None:
                h = replacement
            elif cut is not None and cut(i):
                h = h.detach()
        return self.head(h)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run stage ``index``; return ``(post-activation output, pre-activation output)``.

        The default has no separate pre-activation, so both are the same tensor.
        """
        out = self.stages[index](h)
        return out, out

    def forward(self, x: torch.Tensor, preact: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(logits, feats)``: one feature per stage, post-activation unless ``preact``."""
        h = self.stem(x)
        feats: list[torch.Tensor] = []
        for i in range(len(self.stages)):
            h, pre = self._stage_forward(i, h)
            feats.append(pre if preact else h)
        return self.head(h), feats

    @torch.no_grad()
    def _probe(self, input_shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One eval-mode forward of a zero image of ``input_shape`` (C, H, W); the train/eval mode is restored."""
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters())
            return self(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
        finally:
            self.train(was_training)

    def stage_shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """(C, H, W) of every stage output for one input of ``input_shape`` (C, H, W)."""
        return [tuple(f.shape[1:]) for f in self._probe(input_shape)[1]]  # type: ignore[misc]

    def num_classes(self, input_shape: tuple[int, int, int]) -> int:
        """Width of the logits for one input of ``input_shape``."""
        return int(self._probe(input_shape)[0].shape[1])


# what a model's forward raises on an input it cannot take (timm's ViTs assert their image size)
MODEL_INPUT_ERRORS = (RuntimeError, AssertionError, ValueError, IndexError)


@torch.no_grad()
def probe_logits(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """The logits of one eval-mode forward of a zero image of ``input_shape``, for any model (a staged one's
    stages are shaped by the same forward); the train/eval mode is restored."""
    if isinstance(model, StagedModel):
        return model._probe(input_shape)[0]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=param.device if param is not None else None)
        out = model(x)
        return out[0] if isinstance(out, tuple | list) else out
    finally:
        model.train(was_training)


def _accepts(model: nn.Module, side: int, channels: int) -> bool:
    try:
        probe_logits(model, (channels, side, side))
    except MODEL_INPUT_ERRORS:
        return False
    return True


def check_input_size(model: nn.Module, role: str, input_shape: tuple[int, int, int],
                     num_classes: int | None = None) -> None:
    """A clear error when ``model`` cannot run on images of ``input_shape`` (C, H, W), or (given
    ``num_classes``) does not predict that many classes.

    Too-small images make a pooling or strided layer produce an empty map; PyTorch reports that deep inside the
    forward. We say which model, which size, and the smallest square size that works.
    """
    channels, height, width = input_shape
    who = f"the {role} model" if role else "the model"
    name = getattr(model, "arch_name", None) or type(model).__name__
    try:
        logits = probe_logits(model, input_shape)
    except MODEL_INPUT_ERRORS as err:
        reason = first_line(err)
        sides = [*range(1, 65), 96, 128, 192, 224, 256, 384, 512]  # small models at small sizes: a few ms each
        smallest = next((side for side in sides if _accepts(model, side, channels)), None)
        hint = (f"use images of at least {smallest}x{smallest} pixels, or a model made for small images" if smallest
                else "this model cannot run on these images")
        if str(name).startswith("timm:"):  # timm's ViTs and the like are built for one size, and take another
            hint += f"; a timm model built for one size takes yours with model.kwargs={{img_size: {height}}}"
        raise LakdError(f"{who} '{name}' cannot take {height}x{width} images ({reason}); {hint}") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shown = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise LakdError(f"{who} '{name}' returns {shown} from its forward, not logits of shape (batch, classes): "
                        "wrap it so that forward returns the logits tensor")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise LakdError(f"{who} '{name}' predicts {logits.shape[1]} classes but the data has {num_classes}: build "
                        f"it with {num_classes} outputs (replace its classifier head)")


def forward_stage_with_preact(stage: nn.Sequential, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stage's modules in order -> ``(output, pre-activation)``.

    The last module decides the pre-activation: a block with ``forward_with_preact`` gives its own, a final ReLU
    gives its input; anything else has none, so the output stands for both.
    """
    *body, last = stage
    for module in body:
        h = module(h)
    if hasattr(last, "forward_with_preact"):
        return last.forward_with_preact(h)
    out = last(h)
    return out, (h if isinstance(last, nn.ReLU) else out)


class ClassifierHead(nn.Module):
    """Global average pool + flatten + linear: the usual head of every zoo family."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))


class Renormalise(nn.Module):
    """Per-channel affine map from one input normalisation to another (no parameters, no state saved).

    A teacher trained on ``(x - mean_t) / std_t`` that is fed ``(x - mean_d) / std_d`` sees
    ``x_n * std_d / std_t + (mean_d - mean_t) / std_t``: exactly its own normalisation of the same pixels.
    """

    def __init__(self, data_mean: tuple[float, ...], data_std: tuple[float, ...],
                 model_mean: tuple[float, ...], model_std: tuple[float, ...]) -> None:
        super().__init__()
        d_mean, d_std = torch.tensor(data_mean), torch.tensor(data_std)
        m_mean, m_std = torch.tensor(model_mean), torch.tensor(model_std)
        self.register_buffer("scale", (d_std / m_std)[None, :, None, None], persistent=False)
        self.register_buffer("shift", ((d_mean - m_mean) / m_std)[None, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


def feed_with_normalisation(model: StagedModel, data_mean: tuple[float, ...], data_std: tuple[float, ...],
                            model_mean: tuple[float, ...], model_std: tuple[float, ...]) -> bool:
    """Make ``model`` (trained with ``model_mean/std``) take inputs normalised with ``data_mean/std``.

    The adapter goes in front of the stem, so every path into the model (forward, stage-by-stage runs) sees it.
    Returns whether an adapter was needed. The model's ``state_dict`` keys change (``stem.1....``): use this on
    frozen teachers, not on models that are checkpointed.
    """
    same = all(abs(a - b) < 1e-6 for a, b in zip((*data_mean, *data_std), (*model_mean, *model_std), strict=True))
    if same:
        return False
    model.prepend_input_transform(Renormalise(data_mean, data_std, model_mean, model_std))
    return True
