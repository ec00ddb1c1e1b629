"""Checkpoints: written atomically, read without executing code (``weights_only=True``).

Layout: ``{'model': student state_dict, 'meta': {...}, ...}`` — ``meta`` holds what is needed to rebuild the
model without the config (architecture, class count, normalisation), so ``lakd eval --ckpt`` and distillation
teachers need nothing else. Training state (optimizer, epoch, RNG) rides along for ``--resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lakd.atomic import atomic_write
from lakd.errors import LakdError

CHECKPOINT_FORMAT = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to a temp file in the same folder, fsync, then rename over ``path``.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a torn file.
    """
    def save(f: Any) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's writer reports a full disk as "unexpected pos ..."
            raise OSError(28, f"write failed inside torch.save ({str(exc).splitlines()[0][:120]}); is the disk "
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
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise LakdError(
            f"checkpoint '{path}' cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "It is corrupt/truncated, or not a lakd checkpoint (lakd never unpickles arbitrary objects)"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise LakdError(f"checkpoint '{path}' is not a lakd checkpoint: expected a dict with a 'model' state_dict")
    return ckpt


def checkpoint_meta(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``meta`` block, with the fields every consumer needs checked."""
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or "arch" not in meta or "num_classes" not in meta:
        raise LakdError(f"checkpoint '{path}' has no architecture metadata ('meta.arch', 'meta.num_classes'); "
                        "it was not written by lakd train/distill")
    return meta


def model_from_checkpoint(ckpt: dict[str, Any], meta: dict[str, Any], what: str) -> torch.nn.Module:
    """Build ``meta['arch']`` and load the checkpoint's weights; an unknown arch or a mismatch is one clear error."""
    from lakd.errors import did_you_mean
    from lakd.models import build_model, is_known_model, list_models

    arch = meta["arch"]
    if not isinstance(arch, str) or not is_known_model(arch):
        raise LakdError(f"{what}: unknown architecture '{arch}'{did_you_mean(str(arch), list_models())}; it was "
                        "written by another lakd version or is not a lakd checkpoint (see `lakd train --list-models`)")
    try:
        model = build_model(arch, int(meta["num_classes"]), stages=meta.get("stages"))
    except ValueError as exc:
        raise LakdError(f"{what}: {exc}") from None
    from lakd.models.adapter import user_model

    try:
        user_model(model).load_state_dict(ckpt["model"])  # a hooked model's checkpoint has its module's own keys
    except RuntimeError as exc:
        raise LakdError(f"{what}: weights do not fit architecture '{arch}': {str(exc).splitlines()[0]}") from None
    return model
