"""A tiny ImageFolder of random PNGs, so that the examples can run anywhere in seconds (``--smoke``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, side: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 2  # a little class signal
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
