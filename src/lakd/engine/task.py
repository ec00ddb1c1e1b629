"""What the trainer drives: anything with ``forward_train(x, y, epoch) -> (logits, {name: loss})``.

The trainer sums the named losses, steps the optimizer and evaluates ``student()``; it never knows which
method produced the losses. Plain supervised training (teachers, the vanilla baseline) is one such task.

Two optional capabilities, discovered by attribute:

* ``needs_index = True``: the trainer passes ``index=`` (each sample's position in the training set).
* ``train_step(x, y, epoch, backward, autocast, **batch) -> (logits, {name: detached loss})``: the task
  calls ``backward(loss)`` itself, possibly several times per step (LAKD's module-local backward frees each
  module's graph before the next module runs). The trainer zeroes gradients before and steps after.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class TrainTask(Protocol):
    """The training contract shared by supervised training and every distiller."""

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, epoch: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def learnable_parameters(self) -> Iterable[nn.Parameter]: ...

    def student(self) -> nn.Module: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> object: ...


class SupervisedTask(nn.Module):
    """Cross-entropy on labels (optionally label-smoothed): how teachers are trained."""

    min_batch_size = 1

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward_train(
        self, x: torch.Tensor, y: torch.Tensor, epoch: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)}

    def learnable_parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def student(self) -> nn.Module:
        return self.model
