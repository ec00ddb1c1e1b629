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


def draw_resized_crop_flip(
    batch: int, height: int, width: int, generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random-resized-crop boxes ``(top, left, crop height, crop width)`` and flip mask for ``batch`` images, as
    torchvision's ``RandomResizedCrop`` draws them (area share in ``scale``, log-uniform aspect ``ratio``, up to
    ``attempts`` tries, else the centre crop of the clamped ratio). Drawn apart from applying, for exact replay."""
    import math

    area = height * width
    shares = torch.empty(batch, attempts).uniform_(*scale, generator=generator)
    logs = torch.empty(batch, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(logs)
    w = torch.sqrt(shares * area * aspect).round().long()
    h = torch.sqrt(shares * area / aspect).round().long()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((batch,), -1))
    rows = torch.arange(batch)
    ch, cw = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    # the fallback: the whole image cropped to the nearest allowed aspect ratio, centred
    side_ratio = width / height
    fw = width if ratio[0] <= side_ratio <= ratio[1] else (
        round(height * ratio[0]) if side_ratio < ratio[0] else round(height * ratio[1]))
    fh = height if ratio[0] <= side_ratio <= ratio[1] else (
        round(width / ratio[0]) if side_ratio < ratio[0] else round(width / ratio[1]))
    fw, fh = min(fw, width), min(fh, height)
    missed = first < 0
    ch, cw = torch.where(missed, fh, ch), torch.where(missed, fw, cw)
    top = (torch.rand(batch, generator=generator) * (height - ch + 1)).floor().long()
    left = (torch.rand(batch, generator=generator) * (width - cw + 1)).floor().long()
    top, left = torch.where(missed, (height - ch) // 2, top), torch.where(missed, (width - cw) // 2, left)
    flip = torch.rand(batch, generator=generator) < 0.5
    return top, left, ch, cw, flip


def apply_resized_crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, crop_h: torch.Tensor,
                            crop_w: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box, resize it back to the batch's size (bilinear, antialiased when shrinking),
    flip where asked; float32 out, in the input's value range."""
    _, _, height, width = images.shape
    out = torch.empty(images.shape, dtype=torch.float32)
    for i in range(images.shape[0]):
        t, l_, h, w = int(top[i]), int(left[i]), int(crop_h[i]), int(crop_w[i])
        crop = images[i:i + 1, :, t:t + h, l_:l_ + w].float()
        out[i:i + 1] = torch.nn.functional.interpolate(crop, size=(height, width), mode="bilinear",
                                                       align_corners=False, antialias=h > height or w > width)
    return torch.where(flip[:, None, None, None], out.flip(3), out)
