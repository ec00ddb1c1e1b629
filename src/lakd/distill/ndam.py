"""Non-directional activation maps (NDAM) — our reading of LAKD's "non-directional activation mapping".

For a feature tensor F (B x C x H x W)::

    A(F) = mean_c |F_c|^p                         (B x H x W; p = 2 by default)

The map has no class direction (unlike CAM / Grad-CAM, which weight channels for one class) and no sign (it is
the same for F and -F, so it also works on pre-activation features). It is *coarse-grained*: the map is
average-pooled to a few small grids ("scales": the native grid plus e.g. 4x4 and 2x2), and each pooled map is
either L2-normalised per sample or turned into a spatial softmax with temperature tau. Because the channel axis
is averaged away, student and teacher maps are comparable without any projector, across architectures.

Loss between student and teacher maps, summed over scales and averaged over the batch:

* ``l2``: ``|| a_s / ||a_s|| - a_t / ||a_t|| ||^2``;
* ``kl``: ``tau^2 * KL(softmax(a_t / tau) || softmax(a_s / tau))`` over the spatial positions.

This module is not a method; LAKD (lakd.py) and ``lakd explain`` use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

NATIVE = 0  # the scale value meaning "the map's own grid"


def accumulator(t: torch.Tensor) -> torch.dtype:
    """The dtype sums over ``t`` accumulate in: float64 for float64 input, else float32 (bf16 / fp16 / fp32)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ndam_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``mean_c |F_c|^p``: a (B, H, W) map of where the layer is active, in float32 (float64 for float64 input).

    The sum over channels is taken by ``vector_norm`` with a float32 accumulator straight from the features'
    dtype (bf16 under autocast): no float32 copy of the features is made or saved, and the map is never rounded
    to bf16. Rounding it would cost ~2^-9 relative per position, which is most of the signal once the student's
    map is close to the teacher's (the L2 of two nearly equal normalised maps).
    """
    channels = feat.shape[1]
    norm = torch.linalg.vector_norm(feat, ord=p, dim=1, dtype=accumulator(feat))
    return (norm.square() if p == 2 else norm.pow(p)) / channels


def pool_map(map_: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool a (B, H, W) map to ``size``.

    Where the grid divides evenly this is a fixed-window ``avg_pool2d``: the same values as adaptive pooling (to
    the bit, eager), but cheaper once compiled. Not a reshape + mean: its sums are ordered by the batch
    size, so two processes with half the batch each would drift from one process by rounding.
    """
    h, w = map_.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(map_[:, None], (h // size[0], w // size[1]))[:, 0]
    return F.adaptive_avg_pool2d(map_[:, None], size)[:, 0]


def common_grid(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the finer of two (B, H, W) maps to the coarser one's grid."""
    h = min(a.shape[-2], b.shape[-2])
    w = min(a.shape[-1], b.shape[-1])
    if a.shape[-2:] != (h, w):
        a = pool_map(a, (h, w))
    if b.shape[-2:] != (h, w):
        b = pool_map(b, (h, w))
    return a, b


def coarse_size(map_: torch.Tensor, scale: int) -> tuple[int, int]:
    """The grid ``coarse`` pools a (B, H, W) map to at ``scale``: ``scale`` x ``scale`` capped by the map's own."""
    h, w = map_.shape[-2:]
    return (h, w) if scale == NATIVE else (min(scale, h), min(scale, w))


def coarse(map_: torch.Tensor, scale: int) -> torch.Tensor:
    """Pool a (B, H, W) map to ``scale`` x ``scale`` (never up-sampling); ``NATIVE`` keeps it; -> (B, N)."""
    size = coarse_size(map_, scale)
    if map_.shape[-2:] != size:
        map_ = pool_map(map_, size)
    return map_.flatten(1)


def ndam_loss(
    feat_s: torch.Tensor,
    feat_t: torch.Tensor,
    p: float = 2.0,
    scales: Sequence[int] = (NATIVE, 4, 2),
    mode: str = "l2",
    tau: float = 1.0,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """NDAM distance between student and teacher features (any channel counts, any grids)."""
    return map_loss(ndam_map(feat_s, p), ndam_map(feat_t, p), scales, mode, tau, weights)


def map_loss(
    a_s: torch.Tensor,
    a_t: torch.Tensor,
    scales: Sequence[int] = (NATIVE, 4, 2),
    mode: str = "l2",
    tau: float = 1.0,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The NDAM distance between two (B, H, W) maps (each on its own grid): ``ndam_loss`` after the maps.

    Apart so that the fused local losses (lakd.distill.local_losses) can differentiate it on the small maps alone.
    """
    a_s, a_t = common_grid(a_s, a_t)
    total = a_s.new_zeros(())
    for i, scale in enumerate(scales):
        vs, vt = coarse(a_s, scale), coarse(a_t, scale)
        if mode == "l2":
            d = (F.normalize(vs, dim=1) - F.normalize(vt, dim=1)).pow(2).sum(dim=1).mean()
        elif mode == "kl":
            log_ps = F.log_softmax(vs / tau, dim=1)
            log_pt = F.log_softmax(vt / tau, dim=1)
            d = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * tau**2
        else:
            raise ValueError(f"unknown NDAM loss mode '{mode}' (l2 or kl)")
        total = total + (weights[i] if weights is not None else 1.0) * d
    return total


def spatial_weights(feat_t: torch.Tensor, size: tuple[int, int], p: float = 2.0) -> torch.Tensor:
    """Teacher NDAM as per-position weights (B, 1, H, W) with mean 1: where the teacher is active counts more."""
    a = ndam_map(feat_t, p)
    if a.shape[-2:] != size:
        a = pool_map(a, size)
    a = a / a.flatten(1).mean(dim=1).clamp_min(1e-12)[:, None, None]
    return a[:, None]


def similarity(feat_s: torch.Tensor, feat_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Cosine similarity of student and teacher NDAM maps per sample (B,), on the common grid (for explain)."""
    a_s, a_t = common_grid(ndam_map(feat_s, p), ndam_map(feat_t, p))
    return F.cosine_similarity(a_s.flatten(1), a_t.flatten(1), dim=1)
