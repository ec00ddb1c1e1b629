"""A tiny generated image-classification set: learnable, deterministic, no files needed (tests, demos)."""

from __future__ import annotations

import numpy as np

from lakd.data.cifar import ImageArrays


def make_synthetic(num_images: int, num_classes: int = 10, image_size: int = 32, seed: int = 0) -> ImageArrays:
    """Each class is a fixed random low-frequency colour pattern plus per-image noise and a random shift.

    The classes are separable by a small CNN in a few epochs, so a test can check that training learns.
    """
    if num_images < 1 or num_classes < 2:
        raise ValueError("make_synthetic needs num_images >= 1 and num_classes >= 2")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
    reps = -(-image_size // 4)
    patterns = np.kron(coarse, np.ones((1, reps, reps, 1)))[:, :image_size, :image_size]
    y = np.arange(num_images) % num_classes
    rng.shuffle(y)
    x = patterns[y]
    shifts = rng.integers(-2, 3, size=(num_images, 2))
    for i, (dy, dx) in enumerate(shifts):
        x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(0, 1))
    x = x + rng.normal(0, 25, size=x.shape)
    x = np.clip(x, 0, 255).astype(np.uint8)
    return ImageArrays(x, y.astype(np.int64), [f"class{c}" for c in range(num_classes)])
