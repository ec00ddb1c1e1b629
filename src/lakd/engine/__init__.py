"""The engine: the training loop, checkpoints, device/precision choice, metrics, the step contract.

Imported lazily, so ``lakd.engine.step`` (the contract's types, which the methods implement) can be imported
without the trainer.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Runtime": "lakd.engine.device",
    "resolve_runtime": "lakd.engine.device",
    "SupervisedTask": "lakd.engine.task",
    "TrainTask": "lakd.engine.task",
    "Trainer": "lakd.engine.trainer",
    "evaluate": "lakd.engine.trainer",
    "seed_everything": "lakd.engine.trainer",
    "atomic_torch_save": "lakd.checkpoint",
    "load_checkpoint": "lakd.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lakd.engine' has no attribute {name!r}")
