"""The model registry: every zoo builder registers itself with ``@register_model``, its metadata beside it.

A new family is one file whose builders carry the decorator (and one import in ``lakd.models``): its name, the
input side it was designed for and, where its natural stages are finer than LAKD's local modules should be, the
grouping of stages into modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., Any]
    input_size: int = 32  # side of the square input the model was designed for
    family: str = ""
    #: stages grouped into LAKD local modules (None: one module per stage)
    local_modules: tuple[tuple[int, ...], ...] | None = None


MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None, *, input_size: int = 32, family: str = "",
    local_modules: list[list[int]] | None = None,
) -> Callable[[Builder], Builder]:
    """Function decorator: make a builder ``(num_classes, **options) -> StagedModel`` available by name."""

    def wrap(builder: Builder) -> Builder:
        key = (name or builder.__name__).lower()
        if key in MODELS:
            raise ValueError(f"model '{key}' registered twice")
        groups = tuple(tuple(g) for g in local_modules) if local_modules else None
        MODELS[key] = ModelInfo(key, builder, input_size, family or builder.__module__.rsplit(".", 1)[-1], groups)
        return builder

    return wrap
