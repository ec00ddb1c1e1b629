"""The checkpoint format, shared by the trainer and the tools (eval, export, explain, a teacher's loading):
written atomically, read without executing code (``weights_only=True``), its metadata checked at the door.

Layout: ``{'model': student state_dict, 'meta': CheckpointMeta, ...}`` — ``meta`` holds what is needed to rebuild
the model without the config (architecture, class count, normalisation), so ``lakd eval --ckpt`` and
distillation teachers need nothing else. Training state (optimizer, epoch, RNG) rides along for ``--resume``.
This module imports nothing of the engine: the tools read checkpoints without the training loop.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, TypedDict

import torch

from lakd.atomic import atomic_write
from lakd.errors import LakdError, first_line, refused_load

CHECKPOINT_FORMAT = 1


class CheckpointMeta(TypedDict, total=False):
    """``ckpt['meta']``: what a run records about its model, data and method (``lakd.run._checkpoint_meta``
    writes it; :func:`checkpoint_meta` checks what every reader builds from)."""

    arch: str  # model name (zoo, torchvision:, timm:), or python:<class> for a module given to lakd.fit
    num_classes: int
    stages: list[str] | None  # a library model's stage paths, when not its preset
    kwargs: dict[str, Any]  # the model constructor's options (model.kwargs), plain values
    dataset: str
    classes: list[str]
    mean: list[float]  # the normalisation the model was trained with (0..1 units)
    std: list[float]
    image_size: int
    input_shape: list[int]  # (C, H, W) of one training image
    val_size: int
    split_seed: int
    data: dict[str, Any]  # the data settings, re-read by lakd eval through the config schema (run.recorded_data)
    lakd_version: str
    distill: dict[str, Any]  # method, teacher, its resolved parameters, folds, compiled parts (distillations)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to a temp file in the same folder, fsync, then rename over ``path``.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a torn file.
    """
    def save(f: Any) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's writer reports a full disk as "unexpected pos ..."
            raise OSError(28, f"write failed inside torch.save ({first_line(exc, 120)}); is the disk "
                              "full?") from None

    atomic_write(Path(path), save)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a lakd checkpoint safely; a missing, torn or foreign file is a clear ``LakdError``."""
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean '{path / 'best.pt'}'?" if (path / "best.pt").is_file() else ""
        raise LakdError(f"checkpoint '{path}' is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise LakdError(f"checkpoint '{path}' does not exist")
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a foreign file is not ours to show
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise LakdError(
            f"checkpoint '{path}' cannot be loaded safely ({refused_load(exc, path)}). "
            "It is corrupt/truncated, or not a lakd checkpoint (lakd never unpickles arbitrary objects)"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise LakdError(f"checkpoint '{path}' is not a lakd checkpoint: expected a dict with a 'model' state_dict")
    return ckpt


def checkpoint_meta(ckpt: dict[str, Any], path: str | Path) -> CheckpointMeta:
    """The ``meta`` block, with the fields every consumer needs checked."""
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or "arch" not in meta or "num_classes" not in meta:
        raise LakdError(f"checkpoint '{path}' has no architecture metadata ('meta.arch', 'meta.num_classes'); "
                        "it was not written by lakd train/distill")
    check_meta_fields(meta, path)
    return meta


MAX_CLASSES = 1_000_000  # a crafted class count must not make a model head allocate gigabytes
MAX_IMAGE_SIZE = 4096


def check_meta_fields(meta: dict[str, Any], path: str | Path) -> None:
    """The fields a consumer builds from, checked by type and range before anything is allocated from them."""
    from lakd.errors import short_repr

    def bad(key: str, what: str) -> LakdError:
        return LakdError(f"checkpoint '{path}': meta.{key} = {short_repr(meta.get(key))} is not {what}; the file "
                         "was not written by lakd, or was altered")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta["arch"], str) or not meta["arch"] or len(meta["arch"]) > 200:
        raise bad("arch", "an architecture name")
    if not is_int(meta["num_classes"]) or not 1 <= meta["num_classes"] <= MAX_CLASSES:
        raise bad("num_classes", f"a class count in 1..{MAX_CLASSES}")
    if meta.get("image_size") is not None and (not is_int(meta["image_size"])
                                               or not 1 <= meta["image_size"] <= MAX_IMAGE_SIZE):
        raise bad("image_size", f"an image side in 1..{MAX_IMAGE_SIZE}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise bad(key, "three finite channel values")
    if isinstance(meta.get("std"), (list, tuple)) and any(v <= 0 for v in meta["std"]):
        raise bad("std", "three positive channel values")
    if meta.get("kwargs") is not None:
        from lakd.models import check_model_kwargs

        try:
            meta["kwargs"] = check_model_kwargs(meta["kwargs"], "meta.kwargs")
        except LakdError as exc:
            raise LakdError(f"checkpoint '{path}': {exc}; the file was not written by lakd, or was altered") from None
    stages = meta.get("stages")
    if stages is not None and not (isinstance(stages, list) and stages and len(stages) <= 64
                                   and all(isinstance(s, str) and 0 < len(s) <= 200 for s in stages)):
        raise bad("stages", "a list of module paths")


def model_from_checkpoint(ckpt: dict[str, Any], meta: dict[str, Any], what: str) -> torch.nn.Module:
    """Build ``meta['arch']`` and load the checkpoint's weights; an unknown arch or a mismatch is one clear error."""
    from lakd.errors import did_you_mean
    from lakd.models import build_model, is_known_model, list_models

    arch = meta["arch"]
    if isinstance(arch, str) and arch.startswith("python:"):
        raise LakdError(f"{what} holds a model built in Python ({arch[len('python:'):]}), which lakd cannot rebuild by "
                        "name: load its weights into your own module (its 'model' entry, read with "
                        "torch.load(path, weights_only=True)), or use lakd.fit's summary.load_best(model)")
    if not isinstance(arch, str) or not is_known_model(arch):
        raise LakdError(f"{what}: unknown architecture '{arch}'{did_you_mean(str(arch), list_models())}; it was "
                        "written by another lakd version or is not a lakd checkpoint (see `lakd train --list-models`)")
    from lakd.models.adapter import user_model
    from lakd.models.weights import check_finite, state_dict_mismatch

    state = ckpt["model"]
    if not isinstance(state, dict):
        raise LakdError(f"{what}: weights do not fit architecture '{arch}': not a mapping")

    def build(device: str | None) -> torch.nn.Module:
        try:
            with torch.device(device) if device else contextlib.nullcontext():
                return build_model(arch, int(meta["num_classes"]), stages=meta.get("stages"), **meta.get("kwargs", {}))
        except ValueError as exc:
            raise LakdError(f"{what}: {exc}") from None

    # Compared first on the meta device (shapes, no memory): a small file whose metadata names a wide model with a
    # large class count must not make us allocate gigabytes before its weights are found not to fit.
    model = None
    try:
        shapes: dict[str, Any] = user_model(build("meta")).state_dict()
    except LakdError:
        raise
    except Exception:  # a library model that cannot be built without memory: compared after the real build
        model = build(None)
        shapes = user_model(model).state_dict()
    mismatch, _ = state_dict_mismatch(shapes, state)
    if mismatch:
        raise LakdError(f"{what}: weights do not fit architecture '{arch}': {mismatch}")
    check_finite(state, what)
    model = model if model is not None else build(None)
    target = user_model(model)  # a hooked model's checkpoint has its module's own keys
    try:
        target.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise LakdError(f"{what}: weights do not fit architecture '{arch}': {first_line(exc)}") from None
    return model
