"""The step contract's types, owned by the engine: what a training step is given and what it calls.

``train_step(x, y, progress, backward, autocast=None, *, epoch=None, **batch) -> (logits, {name: detached loss})``:
``progress`` is the fraction of training done, in [0, 1]; ``epoch`` the same point in epochs (the trainer knows
it; recipes whose warm-ups are stated in epochs read it from here); ``backward(loss)`` is the trainer's (its grad
scaler included); ``autocast()`` the run's mixed-precision context. This module imports nothing of lakd, so the
methods (``lakd.distill``) implement the contract without importing the trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

Backward = Callable[[torch.Tensor], None]
Autocast = Callable[[], contextlib.AbstractContextManager]


def joint_step(
    forward_train: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]], x: torch.Tensor, y: torch.Tensor,
    progress: float, backward: Backward, autocast: Autocast | None, **batch: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward_train`` under ``autocast``, one ``backward`` of the summed losses; logits and losses detached."""
    with (autocast or contextlib.nullcontext)():
        logits, losses = forward_train(x, y, progress, **batch)
    backward(sum(losses.values()))
    return logits.detach(), {name: v.detach() for name, v in losses.items()}
