"""Weights from other code bases: a raw ``state_dict`` file loaded into a named architecture, safely.

Checkpoints released by other repositories are ``.pth`` / ``.th`` / ``.pt`` pickles or ``.safetensors`` files,
often wrapped (``{'state_dict': ...}``, ``{'model': ...}``), often with a ``module.`` prefix from
``DataParallel``, and named after their own module tree. We read them without running pickled code
(``torch.load(weights_only=True)``, or safetensors), unwrap them, strip ``module.``, rename keys by a key map
(a named preset or ``[regex, replacement]`` pairs: data, never code) and load strictly: a key that is missing,
left over or of the wrong shape is one clear error that lists them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lakd.errors import LakdError, first_line, refused_load

# Key maps of released checkpoints, as ordered [regex, replacement] rules applied to every key in turn.
KEY_MAP_PRESETS: dict[str, list[tuple[str, str]]] = {
    # akamaster/pytorch_resnet_cifar10 (CIFAR-10 ResNet-20 ... 1202, option-A shortcuts) -> resnet*_a
    "akamaster": [
        (r"^conv1\.", "stem.0."),
        (r"^bn1\.", "stem.1."),
        (r"^layer1\.", "stages.0."),
        (r"^layer2\.", "stages.1."),
        (r"^layer3\.", "stages.2."),
        (r"^linear\.", "head.fc."),
    ],
}

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
_SUFFIXES = (".pth", ".th", ".pt", ".bin", ".safetensors")


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state_dict holding a NaN or inf."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(state: Mapping[str, Any], what: str) -> None:
    """Weights that enter a run or a tool (a teacher, initial weights, a checkpoint to evaluate or export) are
    finite, or one error names them: a NaN teacher would otherwise show up later as a 'non-finite loss' blamed on
    the learning rate. lakd itself never writes a non-finite checkpoint."""
    bad = non_finite_tensors(state)
    if bad:
        raise LakdError(f"{what} holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                        "no finished lakd run writes those: use another file (or the run's last.prev.pt)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (unwrapped, ``module.`` stripped); never runs pickled code."""
    path = Path(path)
    if not path.exists():
        raise LakdError(f"weights file '{path}' does not exist")
    if not path.is_file():
        raise LakdError(f"weights file '{path}' is a directory, not a file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except Exception as exc:
            raise LakdError(f"weights file '{path}' is not a readable safetensors file "
                            f"({type(exc).__name__}: {first_line(exc)})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch's note on a foreign pickle protocol is not ours to show
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LakdError(f"weights file '{path}' cannot be loaded safely ({refused_load(exc, path)}); lakd "
                            "reads only tensors and plain containers, never pickled objects — re-save it as a plain "
                            "state_dict or as .safetensors") from None
    state = _unwrap(raw, path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    check_finite(state, f"weights file '{path}'")
    return state


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """A state_dict, or a dict holding one under a usual key (``state_dict``, ``model``, ...)."""
    for _ in range(3):
        if isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            if not all(isinstance(k, str) for k in raw):
                break
            return dict(raw)
        if isinstance(raw, Mapping):
            inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
            if inner is not None:
                raw = inner
                continue
        break
    found = f"a dict with keys {sorted(map(str, raw))[:8]}" if isinstance(raw, Mapping) else type(raw).__name__
    raise LakdError(f"weights file '{path}' holds no state_dict (a mapping of names to tensors, possibly under "
                    f"one of {', '.join(_WRAPPER_KEYS)}); found {found}")


def resolve_key_map(key_map: str | Sequence[Sequence[str]] | None) -> list[tuple[str, str]]:
    """A preset name or ``[[regex, replacement], ...]`` -> compiled-checked rules; ``None`` -> no renaming."""
    if key_map is None:
        return []
    if isinstance(key_map, str):
        if key_map not in KEY_MAP_PRESETS:
            raise LakdError(f"unknown key map '{key_map}'; presets: {', '.join(sorted(KEY_MAP_PRESETS))}, "
                            "or give [[regex, replacement], ...] pairs")
        return list(KEY_MAP_PRESETS[key_map])
    rules = []
    for rule in key_map:
        if not (isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
                and all(isinstance(r, str) for r in rule)):
            raise LakdError(f"key map rule {rule!r} is not a [regex, replacement] pair of strings")
        try:
            re.compile(rule[0])
        except re.error as exc:
            raise LakdError(f"key map rule {rule!r}: bad regex ({exc})") from None
        rules.append((rule[0], rule[1]))
    return rules


def remap_keys(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply every rule to every key, in order; two keys that end up the same name are an error."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        if new in out:
            raise LakdError(f"key map sends two weights to '{new}' (one of them from '{key}')")
        out[new] = value
    return out


def state_dict_mismatch(own: dict[str, torch.Tensor], state: dict[str, Any]) -> tuple[str, bool]:
    """``(what differs between a model's state_dict and a loaded one, keys look renamed)``; ``""`` if they fit.

    Lists the missing, unexpected and wrong-shape keys (a few of each, with counts), not PyTorch's multi-line
    message, whose first line names no key. BatchNorm's step counter may be absent (older PyTorch).
    """
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts), bool(missing and unexpected)


def classifier_name(model: nn.Module, num_classes: int) -> str:
    """The module path of ``model``'s classifier (the layer that makes the logits): timm's ``get_classifier()``,
    else the last ``Linear`` (or 1x1 ``Conv2d``) with ``num_classes`` outputs."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    found = [name for name, m in model.named_modules() if name and (
        m is head or head is None and (isinstance(m, nn.Linear) and m.out_features == num_classes
                                       or isinstance(m, nn.Conv2d) and m.out_channels == num_classes
                                       and m.kernel_size == (1, 1)))]
    if not found:
        arch = getattr(model, "arch_name", None) or type(model).__name__
        raise LakdError(f"cannot find the classifier of '{arch}' (no Linear layer with {num_classes} outputs) to "
                        "give it a new head: leave out model.new_head and give weights that fit it")
    return found[-1]


def _head_differs(model: nn.Module, own: dict[str, Any], state: dict[str, Any], num_classes: int) -> bool:
    try:
        head = classifier_name(model, num_classes) + "."
    except LakdError:
        return False
    return any(k.startswith(head) and k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
               for k in own)


def load_weights_into(
    model: nn.Module, path: str | Path, key_map: str | Sequence[Sequence[str]] | None = None, what: str = "model",
    new_head: bool = False, num_classes: int | None = None,
) -> list[str]:
    """Load a foreign weights file into ``model`` strictly; every mismatch is listed in one error.

    ``new_head``: the model's classifier (:func:`classifier_name`, ``num_classes`` outputs) keeps its fresh
    initialisation and the file's classifier keys are ignored (pretrained weights for another class count); every
    other key still loads strictly. Returns the keys left as initialised.
    """
    state = remap_keys(read_state_dict(path), resolve_key_map(key_map))
    own = model.state_dict()
    fresh: list[str] = []
    if new_head:
        if num_classes is None:
            raise LakdError("new_head needs num_classes (the class count of the new classifier)")
        head = classifier_name(model, num_classes) + "."
        fresh = [k for k in own if k.startswith(head)]
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    checked = {k: v for k, v in own.items() if k not in fresh}
    mismatch, renamed = state_dict_mismatch(checked, state)
    if mismatch:
        arch = getattr(model, "arch_name", None) or type(model).__name__
        hint = " — pass a key map (model.init_key_map=akamaster, or [[regex, replacement], ...])" if renamed else ""
        head_hint = ""
        if not new_head and num_classes is not None and _head_differs(model, own, state, num_classes):
            head_hint = " — for weights trained on another class count, add model.new_head=true (a fresh classifier)"
        raise LakdError(f"weights '{path}' do not fit the {what} '{arch}': {mismatch}{hint}{head_hint}")
    model.load_state_dict({k: (state[k] if k in state else own[k]).to(own[k].dtype) for k in own})
    return fresh
