"""lakd: Local Attention Knowledge Distillation and standard KD baselines for image classifiers.

The Python API (imported on first use, so ``import lakd`` stays light): ``lakd.fit(student, teacher,
train=..., out=...)`` for lakd's trainer on any model and any map-style ``Dataset`` (``lakd.evaluate`` scores
one), ``lakd.distiller(method, student, teacher, ...)`` for your own training loop, ``lakd.StageSpec`` /
``lakd.HookedModel`` for any ``nn.Module``, ``lakd.build_model(name, num_classes)`` for zoo, ``torchvision:``
and ``timm:`` models.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "fit": "lakd.fitting",
    "evaluate": "lakd.fitting",
    "FitSummary": "lakd.fitting",
    "TrainingStopped": "lakd.engine.trainer",
    "distiller": "lakd.api",
    "staged": "lakd.api",
    "StageSpec": "lakd.models.adapter",
    "HookedModel": "lakd.models.adapter",
    "build_model": "lakd.models",
    "list_methods": "lakd.distill",
    "LakdError": "lakd.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lakd' has no attribute {name!r}")
