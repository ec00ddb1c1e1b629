"""Models: the zoo (builders registered with ``@register_model``) and any other model through a stage spec.

Configs and the CLI refer to models by name: a zoo name (``resnet20``), or ``torchvision:<name>`` /
``timm:<name>`` for those libraries' models with their preset stages (:mod:`lakd.models.presets`). Python
users wrap their own ``nn.Module`` with :class:`HookedModel` and a :class:`StageSpec`.
"""

from __future__ import annotations

from typing import Any

from lakd.errors import did_you_mean
from lakd.models import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn  # noqa: F401 (register)
from lakd.models.adapter import HookedModel, StageSpec, check_gradient_isolation
from lakd.models.base import ClassifierHead, StagedModel
from lakd.models.presets import LIBRARIES, build_library_model
from lakd.models.registry import MODELS, ModelInfo, register_model

__all__ = [
    "MODELS",
    "ClassifierHead",
    "HookedModel",
    "ModelInfo",
    "StageSpec",
    "StagedModel",
    "build_model",
    "check_gradient_isolation",
    "is_known_model",
    "list_models",
    "model_info",
    "model_input_size",
    "register_model",
]

_LIBRARY_INPUT_SIZE = 224


def list_models() -> list[str]:
    """All zoo model names, sorted (``torchvision:`` / ``timm:`` names come from those libraries)."""
    return sorted(MODELS)


def _library(name: str) -> str | None:
    """``'torchvision'`` / ``'timm'`` for a prefixed name, None for a zoo name; an unknown prefix is an error."""
    if ":" not in name:
        return None
    library = name.split(":", 1)[0].strip().lower()
    if library not in LIBRARIES:
        raise ValueError(f"unknown model library '{library}' in {name!r}; use torchvision:<name>, timm:<name> or a "
                         "zoo name")
    return library


def _canonical_name(name: str) -> str:
    """Registry key for ``name`` (case-insensitive); a ``ValueError`` with suggestions if there is none."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if _library(name):
        library, rest = name.split(":", 1)
        return f"{library.strip().lower()}:{rest.strip()}"
    key = name.strip().lower()
    if key in MODELS:
        return key
    raise ValueError(f"unknown model {name!r}{did_you_mean(key, MODELS)}. Known models: "
                     f"{', '.join(list_models())}, or torchvision:<name> / timm:<name>")


def is_known_model(name: str) -> bool:
    """Whether ``name`` is a zoo name or a well-formed ``torchvision:`` / ``timm:`` name (not built here)."""
    try:
        key = _canonical_name(name)
    except (ValueError, TypeError):
        return False
    return key in MODELS or (":" in key and bool(key.split(":", 1)[1]))


def model_info(name: str) -> ModelInfo | None:
    """The zoo metadata of ``name`` (None for library models)."""
    return MODELS.get(_canonical_name(name))


def build_model(name: str, num_classes: int, stages: list[str] | None = None, **options: Any) -> StagedModel:
    """Build model ``name`` with a ``num_classes``-way head; ``options`` go to its builder. ``stages``: module
    paths to use as the stages of a ``torchvision:`` / ``timm:`` model instead of its preset."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    key = _canonical_name(name)
    library = _library(key)
    if library:
        return build_library_model(library, key.split(":", 1)[1], num_classes, stages=stages, **options)
    if stages is not None:
        raise ValueError(f"zoo model '{key}' has its own stages: leave out 'stages' (it is for torchvision:/timm: "
                         "models)")
    model = MODELS[key].builder(num_classes=num_classes, **options)
    model.arch_name = key  # lets split tables (LAKD) and checkpoints name the architecture
    return model


def model_input_size(name: str) -> int:
    """Side of the square input the model was designed for (32 for the CIFAR families, 224 for ImageNet ones)."""
    key = _canonical_name(name)
    return _LIBRARY_INPUT_SIZE if _library(key) else MODELS[key].input_size
