"""Export a trained student for deployment: its weights alone, in a format other tools can read.

A lakd checkpoint is a torch-specific bundle (read with ``weights_only``) that also carries training state (RNG,
optimizer, the distiller's projectors/embeddings/memory under ``'task'``). Deployment needs none of that, so an export
holds only ``ckpt['model']`` — the student's state_dict, which the trainer saves apart from the distiller's extras —
loaded strictly into the architecture named by the checkpoint, so a stray key is an error, not a passenger.

* ``safetensors``: the student's state_dict plus the metadata needed to rebuild it (:func:`load_exported`).
* ``onnx``: the student's eval-mode graph returning logits only (input ``images``, output ``logits``, dynamic
  batch), with the same metadata in ``metadata_props``.

Both are optional dependencies (``lakd[export]``, ``lakd[onnx]``): training never needs them.

Every metadata value is a JSON string, because both formats only store ``str -> str``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lakd import __version__
from lakd.atomic import atomic_write
from lakd.checkpoint import check_meta_fields, checkpoint_meta, load_checkpoint, model_from_checkpoint
from lakd.errors import LakdError, first_line

EXPORT_FORMATS = ("safetensors", "onnx")
ONNX_OPSET = 17
ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
IMAGE_CHANNELS = 3  # every lakd dataset is decoded to RGB
#: Checkpoint meta fields worth carrying to deployment (no local paths, no training config).
ONNX_MAX_SIDE = 1024  # the ONNX trace's input side: a checkpoint's (allowed) 4096 must not make it allocate GBs
META_FIELDS = ("arch", "stages", "kwargs", "num_classes", "dataset", "classes", "mean", "std", "image_size",
               "input_shape")
_ONNX_HINT = "pip install 'lakd[onnx]' (or: pip install onnx onnxruntime)"
_SAFETENSORS_HINT = "pip install 'lakd[export]' (or: pip install safetensors)"


def _require(module: str, purpose: str, hint: str) -> None:
    """Fail before any work with the install line, rather than an ImportError halfway through."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise LakdError(f"{purpose} needs the '{module}' package, which is not installed: {hint}") from None


class LogitsOnly(nn.Module):
    """Deployment view of a zoo model: zoo models also return per-stage features, which only distillation uses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_meta(meta: dict[str, Any], source_sha256: str) -> dict[str, str]:
    """The ``str -> str`` metadata written into an export: what a consumer needs to rebuild and feed the model."""
    fields: dict[str, Any] = {k: meta[k] for k in META_FIELDS if meta.get(k) is not None}
    distill = meta.get("distill")
    if isinstance(distill, dict):  # provenance only; the teacher's path is local to the training machine
        fields["distill"] = {k: distill.get(k) for k in ("method", "teacher_arch")}
    fields["lakd_version"] = __version__
    fields["source_sha256"] = source_sha256
    return {k: json.dumps(v) for k, v in fields.items()}


def _decode_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value  # a field another tool added (e.g. safetensors' own "format": "pt")
    if "arch" not in meta or "num_classes" not in meta:
        raise LakdError(f"'{path}' has no lakd metadata ('arch', 'num_classes'): it was not written by lakd export")
    check_meta_fields(meta, path)
    return meta


def _safetensors_bytes(model: nn.Module, metadata: dict[str, str]) -> tuple[bytes, int]:
    from safetensors.torch import save

    # Cloned so that no two entries share storage (safetensors refuses aliases) and channels_last weights
    # become plain contiguous tensors.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt", **metadata}), len(tensors)


def _onnx_bytes(model: nn.Module, metadata: dict[str, str], image_size: int, what: str) -> bytes:
    import onnx

    wrapper = LogitsOnly(model).eval()
    dummy = torch.zeros(2, IMAGE_CHANNELS, image_size, image_size)
    # The TorchScript exporter needs only `onnx`; the newer dynamo exporter would also need `onnxscript`.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch announces the legacy exporter's retirement
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                wrapper, (dummy,), buf, opset_version=ONNX_OPSET, input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT], dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                do_constant_folding=True, **legacy,
            )
    except Exception as exc:
        raise LakdError(f"{what}: ONNX export failed ({type(exc).__name__}: {first_line(exc)})") from exc
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_checkpoint(
    ckpt_path: str | Path, out_path: str | Path | None = None, fmt: str = "safetensors", force: bool = False
) -> dict[str, Any]:
    """Write the student of a lakd checkpoint alone as ``fmt``; returns what was written.

    The default output is the checkpoint path with a ``.safetensors`` / ``.onnx`` suffix. An existing output is
    only replaced with ``force``; the checkpoint itself never is. The file is written atomically.
    """
    if fmt not in EXPORT_FORMATS:
        raise LakdError(f"unknown export format '{fmt}': choose one of {', '.join(EXPORT_FORMATS)}")
    src = Path(ckpt_path)
    out = Path(out_path) if out_path is not None else src.with_suffix(f".{fmt}")
    if out.exists() and out.resolve() == src.resolve():
        raise LakdError(f"export output '{out}' is the checkpoint itself: choose another output path")
    if out.is_dir():
        raise LakdError(f"export output '{out}' is a directory: give a file path")
    if out.exists() and not force:
        raise LakdError(f"export output '{out}' already exists: use --force to overwrite it")
    ckpt = load_checkpoint(src)
    meta = checkpoint_meta(ckpt, src)
    what = f"checkpoint '{src}'"
    if fmt == "onnx":
        from lakd.models import model_input_size

        image_size = int(meta.get("image_size") or model_input_size(str(meta["arch"])))
        if image_size > ONNX_MAX_SIDE:  # the trace runs the model on images of this size: bounded before any work
            raise LakdError(f"{what}: ONNX export traces the model on {image_size}x{image_size} images, more than "
                            f"the {ONNX_MAX_SIDE}x{ONNX_MAX_SIDE} lakd traces at; export it as safetensors")
        _require("onnx", "ONNX export", _ONNX_HINT)
    else:
        _require("safetensors", "safetensors export", _SAFETENSORS_HINT)
    # Only ckpt['model'] (the student) is read: the distiller's extras under 'task' never reach the export.
    model = model_from_checkpoint(ckpt, meta, what).eval()
    metadata = export_meta(meta, _sha256(src))
    info: dict[str, Any] = {"format": fmt}
    if fmt == "safetensors":
        from lakd.models.adapter import user_model

        data, info["tensors"] = _safetensors_bytes(user_model(model), metadata)  # a library model: its own keys
    else:
        data = _onnx_bytes(model, metadata, image_size, what)
        info.update(opset=ONNX_OPSET, input=ONNX_INPUT, output=ONNX_OUTPUT,
                    input_shape=["batch", IMAGE_CHANNELS, image_size, image_size])
    atomic_write(out, lambda f: f.write(data))
    return {
        "path": str(out),
        "arch": meta["arch"],
        "num_classes": int(meta["num_classes"]),
        "bytes": out.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "source": str(src),
        "source_sha256": json.loads(metadata["source_sha256"]),
        **info,
    }


def load_exported(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a ``.safetensors`` export (eval mode, CPU) and return it with its metadata.

    The model is the lakd zoo model, so ``model(x)`` returns ``(logits, stage features)``; wrap it in
    :class:`LogitsOnly` for logits alone. ONNX exports are run with ``onnxruntime`` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise LakdError(f"export '{path}' does not exist")
    if path.suffix == ".onnx":
        raise LakdError(f"'{path}' is an ONNX export: run it with onnxruntime.InferenceSession "
                        f"(input '{ONNX_INPUT}', output '{ONNX_OUTPUT}')")
    _require("safetensors", "loading an export", _SAFETENSORS_HINT)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise LakdError(f"export '{path}' cannot be read as safetensors ({type(exc).__name__}: "
                        f"{first_line(exc)})") from None
    meta = _decode_meta(raw, path)
    model = model_from_checkpoint({"model": tensors}, meta, f"export '{path}'")
    return model.eval(), meta
