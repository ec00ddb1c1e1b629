"""Augmentation on whole batches of tensors: one gather for the crops, one ``where`` for the flips.

Per-sample PIL transforms (torchvision style) cost ~10x more CPU than the model on small images; doing it on
the batch keeps a 2-core machine busy with training instead of data.
"""

from __future__ import annotations

import torch


def draw_crop_flip(
    batch: int, padding: int, flip: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (y, x) in ``[0, 2*padding]`` and flip mask for ``batch`` images.

    Drawing is separate from applying so a resumed epoch can replay the draws of skipped steps.
    """
    oy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    mask = torch.rand(batch, generator=generator) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    return oy, ox, mask


def apply_crop_flip(
    images: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor, flip_mask: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop each image at its (oy, ox), flip where ``flip_mask``; (B, C, H, W)."""
    b, c, h, w = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # B,1,H,1
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # B,1,1,W
        batch = torch.arange(b)[:, None, None, None]
        chans = torch.arange(c)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    if bool(flip_mask.any()):
        out = torch.where(flip_mask[:, None, None, None], out.flip(3), out)
    return out


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad-``padding`` random crop (zero padding, as the CIFAR recipes) and random horizontal flip."""
    oy, ox, mask = draw_crop_flip(images.shape[0], padding, flip, generator)
    return apply_crop_flip(images, padding, oy, ox, mask)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std``; mean/std shaped (C,)."""
    scale = 1.0 / (255.0 * std)
    shift = -mean / std
    return images.float() * scale[None, :, None, None] + shift[None, :, None, None]
