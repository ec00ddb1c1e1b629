"""Model zoo: every name maps to a builder returning a :class:`StagedModel`.

Configs and the CLI refer to models by name only, so adding a family means adding its builders here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from lakd.models import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn
from lakd.models.base import ClassifierHead, StagedModel

__all__ = [
    "MODEL_REGISTRY",
    "ClassifierHead",
    "StagedModel",
    "build_model",
    "list_models",
    "model_input_size",
]

MODEL_REGISTRY: dict[str, Callable[..., StagedModel]] = {
    # CIFAR ResNets (CRD / RepDistiller benchmark)
    "resnet8": resnet_cifar.resnet8,
    "resnet14": resnet_cifar.resnet14,
    "resnet20": resnet_cifar.resnet20,
    "resnet32": resnet_cifar.resnet32,
    "resnet44": resnet_cifar.resnet44,
    "resnet56": resnet_cifar.resnet56,
    "resnet110": resnet_cifar.resnet110,
    "resnet8x4": resnet_cifar.resnet8x4,
    "resnet32x4": resnet_cifar.resnet32x4,
    # original CIFAR ResNets, option-A shortcuts (akamaster's released weights fit them)
    "resnet20_a": resnet_cifar.resnet20_a,
    "resnet32_a": resnet_cifar.resnet32_a,
    "resnet44_a": resnet_cifar.resnet44_a,
    "resnet56_a": resnet_cifar.resnet56_a,
    "resnet110_a": resnet_cifar.resnet110_a,
    # Wide ResNets
    "wrn_16_1": wrn.wrn_16_1,
    "wrn_16_2": wrn.wrn_16_2,
    "wrn_40_1": wrn.wrn_40_1,
    "wrn_40_2": wrn.wrn_40_2,
    # VGG with BatchNorm
    "vgg8": vgg.vgg8,
    "vgg11": vgg.vgg11,
    "vgg13": vgg.vgg13,
    "vgg16": vgg.vgg16,
    "vgg19": vgg.vgg19,
    # Light-weight students
    "mobilenetv2": mobilenetv2.mobilenetv2,
    "shufflenet_v1": shufflenet.shufflenet_v1,
    "shufflenet_v2": shufflenet.shufflenet_v2,
    # ImageNet ResNets (torchvision-equivalent)
    "resnet18": resnet_imagenet.resnet18,
    "resnet34": resnet_imagenet.resnet34,
    "resnet50": resnet_imagenet.resnet50,
}

_IMAGENET_MODELS = frozenset({"resnet18", "resnet34", "resnet50"})
_CIFAR_INPUT_SIZE = 32
_IMAGENET_INPUT_SIZE = 224


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(MODEL_REGISTRY)


def _canonical_name(name: str) -> str:
    """Registry key for ``name`` (case-insensitive); a ``ValueError`` with suggestions if there is none."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in MODEL_REGISTRY:
        return key
    close = difflib.get_close_matches(key, MODEL_REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")


def build_model(name: str, num_classes: int, **kwargs: Any) -> StagedModel:
    """Build the registered model ``name`` with a ``num_classes``-way head; ``kwargs`` go to its builder."""
    builder = MODEL_REGISTRY[_canonical_name(name)]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = builder(num_classes=num_classes, **kwargs)
    model.arch_name = _canonical_name(name)  # lets split tables (LAKD) and checkpoints name the architecture
    return model


def model_input_size(name: str) -> int:
    """Side of the square input the model was designed for: 32 (CIFAR families) or 224 (ImageNet ResNets)."""
    key = _canonical_name(name)
    return _IMAGENET_INPUT_SIZE if key in _IMAGENET_MODELS else _CIFAR_INPUT_SIZE
