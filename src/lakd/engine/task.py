"""What the trainer drives: one step contract, shared by supervised training and every distiller.

``train_step(x, y, progress, backward, autocast, **batch) -> (logits, {name: detached loss})`` (its types in
``lakd.engine.step``) runs one step's
forward and calls ``backward(loss)`` itself, once or several times (LAKD's module-local backward frees each
module's graph before the next module runs); the trainer zeroes gradients before and steps the optimizer after,
and never knows which method produced the losses. ``needs_index`` says whether the step wants ``index=`` (each
sample's position in the training set, e.g. CRD's memory bank). :func:`joint_step` is the step of every task
whose losses are one graph: ``forward_train`` under autocast, then one backward of the sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from lakd.engine.step import Autocast, Backward, joint_step
from lakd.models.adapter import user_model


@runtime_checkable
class TrainTask(Protocol):
    """The training contract shared by supervised training and every distiller."""

    needs_index: bool
    min_batch_size: int

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, backward: Backward, autocast: Autocast | None = None,
        **batch: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def learnable_parameters(self) -> Iterable[nn.Parameter]: ...

    def student(self) -> nn.Module: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> object: ...


class SupervisedTask(nn.Module):
    """Cross-entropy on labels (optionally label-smoothed): how teachers are trained."""

    min_batch_size = 1
    needs_index = False

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(x)  # a staged model's (logits, features), or a plain module's logits
        logits = out[0] if isinstance(out, tuple) else out
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)}

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, progress: float, backward: Backward, autocast: Autocast | None = None,
        **batch: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch.pop("epoch", None)  # labels have no warm-up
        return joint_step(self.forward_train, x, y, progress, backward, autocast)

    def learnable_parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def student(self) -> nn.Module:
        return user_model(self.model)
