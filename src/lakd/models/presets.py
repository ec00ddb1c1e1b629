"""Stage specs for the common families, so that most users never write one.

``torchvision:<name>`` and ``timm:<name>`` build the library's own model (random init; weights come from a file,
never downloaded here) and wrap it in a :class:`HookedModel` with the family's stages:

* torchvision ResNet / ResNeXt / Wide ResNet: ``layer1`` ... ``layer4``; RegNet: ``trunk_output.block1`` ... ``4``;
* models with a ``features`` sequence (MobileNetV2/V3, EfficientNet, ConvNeXt, VGG, ...): the last block at each
  resolution from 1/4 of the input down, found by one probe forward;
* Vision Transformers (torchvision ``VisionTransformer``, timm ViTs): four evenly spaced encoder blocks, ending at
  the last, read as token grids (class token dropped);
* timm models: their own ``feature_info`` (the entries from 1/4 of the input down; for equal reductions, four
  evenly spaced ones).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from lakd.errors import LakdError, first_line
from lakd.models.adapter import HookedModel, StageSpec

LIBRARIES = ("torchvision", "timm")
_PROBE_SIDE = 224


def _import(library: str) -> Any:
    try:
        return importlib.import_module("timm" if library == "timm" else "torchvision.models")
    except ImportError as exc:
        raise LakdError(f"models named '{library}:...' need the {library} package ({exc}); install it next to "
                        f"your torch (pip install {library})") from None


def _evenly_spaced(paths: list[str], count: int = 4) -> list[str]:
    """``count`` of ``paths``, evenly spaced and ending at the last one (all of them if there are fewer)."""
    n = len(paths)
    if n <= count:
        return paths
    return [paths[round((k + 1) * n / count) - 1] for k in range(count)]


@torch.no_grad()
def _resolution_groups(model: nn.Module, children: nn.Sequential, prefix: str, side: int) -> list[str]:
    """The last child of ``children`` at each resolution from 1/4 of the input down (one probe forward)."""
    shapes: dict[int, tuple[int, ...]] = {}
    handles = [child.register_forward_hook(lambda _m, _i, out, k=k: shapes.__setitem__(k, tuple(out.shape)))
               for k, child in enumerate(children)]
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, side, side))
    finally:
        model.train(was)
        for handle in handles:
            handle.remove()
    last_at: dict[int, int] = {}
    for k in sorted(shapes):
        if len(shapes[k]) == 4:
            last_at[shapes[k][-1]] = k  # width of the map -> last child producing it
    return [f"{prefix}.{k}" for width, k in sorted(last_at.items(), key=lambda kv: -kv[0]) if side // width >= 4]


def spec_for(model: nn.Module, library: str, name: str) -> StageSpec:
    """The preset stage spec of a torchvision or timm model (a clear error for a family without one)."""
    source = f"{library}:{name} preset"
    cls = type(model).__name__
    if library == "timm":
        info = getattr(model, "feature_info", None)
        if not info:
            raise LakdError(f"timm model '{name}' declares no feature_info: give its stages yourself (stages=[...])")
        entries = [e for e in info if isinstance(e, dict) and "module" in e]
        if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):  # a ViT: tokens on a grid
            patch = model.patch_embed.patch_size
            return StageSpec(tuple(_evenly_spaced([e["module"] for e in entries])), layout="tokens",
                             prefix_tokens=int(model.num_prefix_tokens),
                             patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch), source=source)
        reductions = {e["reduction"] for e in entries}
        if len(reductions) == 1:
            paths = _evenly_spaced([e["module"] for e in entries])
        else:
            paths = [e["module"] for e in entries if e["reduction"] >= 4]
        layout = "nhwc" if str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC" else "nchw"
        return StageSpec(tuple(paths), layout=layout, source=source)
    if cls == "VisionTransformer":
        blocks = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
        return StageSpec(tuple(_evenly_spaced(blocks)), layout="tokens", prefix_tokens=1,
                         patch_size=int(model.patch_size), source=source)
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # ResNet, ResNeXt, Wide ResNet
        return StageSpec(("layer1", "layer2", "layer3", "layer4"), source=source)
    trunk = getattr(model, "trunk_output", None)
    if isinstance(trunk, nn.Sequential):  # RegNet
        return StageSpec(tuple(f"trunk_output.{n}" for n, _ in trunk.named_children()), source=source)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return StageSpec(tuple(_resolution_groups(model, features, "features", _PROBE_SIDE)), source=source)
    raise LakdError(f"no stage preset for {library} model '{name}' ({cls}); give its stages yourself "
                    "(stages=[module paths], see README 'Any model')")


def build_library_model(library: str, name: str, num_classes: int, stages: list[str] | None = None,
                        **options: Any) -> HookedModel:
    """``torchvision:<name>`` / ``timm:<name>`` with a ``num_classes``-way head, random init, preset stages (or
    ``stages``, module paths of the model)."""
    lib = _import(library)
    try:
        if library == "timm":
            model = lib.create_model(name, pretrained=False, num_classes=num_classes, **options)
        else:
            model = lib.get_model(name, weights=None, num_classes=num_classes, **options)
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise LakdError(f"cannot build {library} model '{name}': {first_line(exc, 300)}") from None
    _check_options_taken(library, lib, name, model, options)
    spec = StageSpec(tuple(stages), source=f"{library}:{name} (given)") if stages else spec_for(model, library, name)
    return HookedModel(model, spec, name=f"{library}:{name}")


def _check_options_taken(library: str, lib: Any, name: str, model: Any, options: dict[str, Any]) -> None:
    """Library constructors swallow unknown keywords (``**kwargs``): an option that is neither a named parameter
    of the model's class nor of its builder would be accepted and do nothing, so it is an error here."""
    import inspect

    def named(fn: Any) -> set[str]:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return set()
        return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    taken = named(type(model).__init__)
    if library == "torchvision":
        taken |= named(lib.get_model_builder(name))
    unknown = sorted(set(options) - taken)
    if unknown:
        shown = ", ".join(sorted(taken - {"self", "num_classes", "weights", "progress", "pretrained"})[:24])
        raise LakdError(f"{library} model '{name}' has no constructor option(s) {unknown} ({library} would ignore "
                        f"them); its options: {shown}")


def list_library_models(library: str) -> list[str]:
    """Names the library can build (empty when it is not installed)."""
    try:
        lib = _import(library)
    except LakdError:
        return []
    return sorted(lib.list_models()) if library == "timm" else sorted(lib.list_models(module=lib))
