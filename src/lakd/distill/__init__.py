"""Distillation methods, one file each, all under the contract of :mod:`lakd.distill.base`.

Every module in this package is imported here so that its ``@register`` runs; ``build_distiller`` then makes
any method by name with validated hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from lakd.distill.base import DISTILLERS, Distiller, DistillParams, register
from lakd.errors import LakdError, did_you_mean
from lakd.models.base import StagedModel

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def list_methods() -> list[str]:
    return sorted(DISTILLERS)


def make_params(method: str, values: dict[str, Any] | None) -> DistillParams:
    """The method's ``Params`` dataclass filled from ``values``; unknown keys / wrong types -> LakdError."""
    from lakd.config import _apply

    cls = method_class(method)
    params = cls.Params()
    for old in set(values or {}) & set(cls.renamed_params):
        raise LakdError(f"distill.params.{old} is now called '{cls.renamed_params[old]}' (method '{method}'): "
                        "rename it in your config or command line")
    try:
        _apply(params, dict(values or {}), prefix="distill.params.")
    except LakdError as exc:
        raise LakdError(f"{exc} (method '{method}')") from None
    check = getattr(params, "validate", None)
    if check is not None:
        check()
    return params


def method_class(method: str) -> type[Distiller]:
    if method not in DISTILLERS:
        raise LakdError(f"unknown distillation method '{method}'{did_you_mean(method, DISTILLERS)}; "
                        f"known: {', '.join(list_methods())}")
    return DISTILLERS[method]


def build_distiller(
    method: str,
    student: StagedModel,
    teacher: StagedModel | None,
    params: dict[str, Any] | DistillParams | None = None,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    total_epochs: float = 1,
    train_labels: Any = None,
) -> Distiller:
    """Make method ``method`` for a student/teacher pair. ``train_labels`` (the training set's labels, in the
    order of the ``index`` the loader passes) size memory banks and pick negatives (CRD)."""
    cls = method_class(method)
    if not isinstance(params, DistillParams):
        params = make_params(method, params)
    kwargs: dict[str, Any] = {}
    if cls.needs_index:
        if train_labels is None:
            raise LakdError(f"method '{method}' needs the training set's labels (train_labels)")
        kwargs["train_labels"] = train_labels
    return cls(student, teacher, params, input_shape=input_shape, total_epochs=total_epochs, **kwargs)


def params_as_dict(params: DistillParams) -> dict[str, Any]:
    return dataclasses.asdict(params)


__all__ = [
    "DISTILLERS",
    "DistillParams",
    "Distiller",
    "build_distiller",
    "list_methods",
    "make_params",
    "method_class",
    "register",
]
