"""Per-image ImageNet transforms with Pillow: RandomResizedCrop + flip for training, resize + centre crop for eval.

Written by hand (torchvision is not a dependency) to match torchvision's definitions: crop boxes are drawn as
``RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3))`` draws them, evaluation resizes the shorter side to
``size * 256 / 224`` and centre-crops ``size``; resampling is Pillow's antialiased bilinear, as torchvision's on
PIL images. Two shortcuts keep the CPU cost down, neither changes what is computed beyond resampling noise:

* crop and resize are one ``Image.resize(..., box=...)`` call, so only the crop's pixels are resampled;
* a JPEG is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``, a DCT-domain reduction) whenever the crop still
  has at least ``size`` pixels each way at that scale — a 500x375 ImageNet photo cropped to 224 px usually is.

Randomness comes from a ``numpy.random.Generator`` passed in, so the caller decides what it is a function of
(the streaming loader seeds one per (seed, epoch, position)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lakd.data.folder import ImageFolderError

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow >= 9.1 moved the constants
_FLIP = getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the full-size image


def eval_resize_size(size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, the standard ImageNet ratio."""
    return int(size * 256 / 224)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop covering ``scale`` of the area with aspect ``ratio`` (torchvision's
    algorithm: 10 tries, then the largest centred crop whose aspect lies in ``ratio``)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def centre_crop_box(width: int, height: int, size: int, resize_to: int | None = None) -> Box:
    """The region of the full image that ``Resize(resize_to)`` then ``CenterCrop(size)`` keeps, as a float box.

    Same integer rules as torchvision: the longer side becomes ``int(resize_to * long / short)`` and the crop
    starts at ``round((resized - size) / 2)``.
    """
    r = eval_resize_size(size) if resize_to is None else resize_to
    if width <= height:
        new_w, new_h = r, int(r * height / width)
    else:
        new_w, new_h = int(r * width / height), r
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _draft(img: Image.Image, box: Box, size: int) -> tuple[Image.Image, float]:
    """Ask the JPEG decoder for the smallest DCT scale that still gives ``box`` >= ``size`` pixels each way.

    Returns the image (same object, now set to decode reduced) and the factor from full-size to decoded pixels.
    """
    if img.format != "JPEG":
        return img, 1.0
    width, height = img.size
    bw, bh = box[2] - box[0], box[3] - box[1]
    want = (max(1, math.ceil(width * size / bw)), max(1, math.ceil(height * size / bh)))
    done = img.draft("RGB", want)
    if not done:
        return img, 1.0
    return img, done[1][2] / width  # the returned box is the full image in decoded pixels


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when going P -> RGB with a transparency key
    return img.convert("RGB")


def _crop_resize(
    path: str | Path, size: int, pick: Callable[[int, int], tuple[Box, bool]], draft: bool
) -> np.ndarray:
    """Open ``path``, let ``pick(width, height) -> (box, flip)`` choose the region, return it as size x size."""
    try:
        with Image.open(path) as img:
            box, flip = pick(*img.size)
            scale = 1.0
            if draft:
                img, scale = _draft(img, box, size)
            rgb = _rgb(img)
            out = rgb.resize((size, size), _BILINEAR, box=tuple(v * scale for v in box))
            if flip:
                out = out.transpose(_FLIP)
            return np.asarray(out, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageFolderError(f"cannot decode image {path}: {type(exc).__name__}: {exc}. "
                               "Remove or replace the file.") from exc


def load_train_image(path: str | Path, size: int, rng: np.random.Generator, draft: bool = True) -> np.ndarray:
    """RandomResizedCrop(size, (0.08, 1), (3/4, 4/3)) + horizontal flip (p = 0.5): uint8 (size, size, 3)."""

    def pick(width: int, height: int) -> tuple[Box, bool]:
        left, top, w, h = random_resized_crop_box(width, height, rng)
        flip = bool(rng.random() < 0.5)
        return (float(left), float(top), float(left + w), float(top + h)), flip

    return _crop_resize(path, size, pick, draft)


def load_eval_image(path: str | Path, size: int, draft: bool = True) -> np.ndarray:
    """Resize the shorter side to ``size * 256 / 224``, centre-crop ``size``: uint8 (size, size, 3)."""
    return _crop_resize(path, size, lambda w, h: (centre_crop_box(w, h, size), False), draft)
