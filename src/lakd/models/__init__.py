"""Models: the zoo (builders registered with ``@register_model``) and any other model through a stage spec.

Configs and the CLI refer to models by name: a zoo name (``resnet20``), or ``torchvision:<name>`` /
``timm:<name>`` for those libraries' models with their preset stages (:mod:`lakd.models.presets`). Python
users wrap their own ``nn.Module`` with :class:`HookedModel` and a :class:`StageSpec`.
"""

from __future__ import annotations

from typing import Any

from lakd.errors import LakdError, did_you_mean, first_line
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


# Constructor options a config or checkpoint may not set: the data sets the class count, and lakd never lets a
# model constructor fetch or read weights on its own (weights come through model.init_weights, read safely).
RESERVED_OPTIONS = ("num_classes", "pretrained", "weights", "checkpoint_path", "pretrained_cfg",
                    "pretrained_cfg_overlay", "cache_dir", "progress")


def check_model_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """``model.kwargs`` checked wherever it enters (a config, a checkpoint's metadata): a mapping of option names
    to plain values (numbers, strings, booleans, short lists of them), none of them reserved."""
    from lakd.errors import short_repr

    if not isinstance(kwargs, dict):
        raise LakdError(f"{where} must be a mapping of constructor options, e.g. {{drop_rate: 0.1}}; got "
                        f"{short_repr(kwargs)}")

    def plain(v: Any) -> bool:
        return v is None or isinstance(v, bool | int | float | str) and (not isinstance(v, str) or len(v) <= 200)

    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise LakdError(f"{where}: {short_repr(key)} is not an option name")
        if key in RESERVED_OPTIONS:
            hint = ("the data sets it" if key == "num_classes" else
                    "weights come from model.init_weights (a file, read safely), never from the constructor")
            raise LakdError(f"{where}.{key} cannot be set: {hint}")
        if not (plain(value) or isinstance(value, list | tuple) and len(value) <= 16 and all(map(plain, value))):
            raise LakdError(f"{where}.{key} = {short_repr(value)} is not a plain value (a number, string, boolean "
                            "or a short list of them)")
    return dict(kwargs)


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
    try:
        model = MODELS[key].builder(num_classes=num_classes, **options)
    except TypeError as exc:
        if not options:
            raise
        import inspect

        known = [p for p in inspect.signature(MODELS[key].builder).parameters if p != "num_classes"]
        raise ValueError(f"zoo model '{key}' does not take option(s) {sorted(options)} ({first_line(exc, 120)}); "
                         f"its options: {', '.join(known) or 'none'}") from None
    model.arch_name = key  # lets split tables (LAKD) and checkpoints name the architecture
    return model


def model_input_size(name: str) -> int:
    """Side of the square input the model was designed for (32 for the CIFAR families, 224 for ImageNet ones)."""
    key = _canonical_name(name)
    return _LIBRARY_INPUT_SIZE if _library(key) else MODELS[key].input_size
