"""LAKD's local losses — each module's feature MSE and NDAM loss — twice: the reference through autograd (every form,
the study's too: ``local_loss_terms``) and, beside it, the fused twin LAKD trains with, several modules at once
with a hand-derived backward.

Autograd through the two losses walks each large feature tensor several times (the difference, the map's norm
and its gradient, the sum of the two terms' gradients). The fused form's forward reads each feature once, and
returns beside the loss values the gradient of the NDAM loss with respect to the *small* (B, H, W) map (derived by
hand: ``map_loss_and_grad``); the backward then writes each feature's gradient in one elementwise pass:

    dL/dF = c_feat * 2 (S - T) / numel  +  c_ndam * g_map * p |F|^(p-1) sign(F) / C

(``S`` the projected student feature, ``T`` the teacher's; the first term goes to ``S`` when a projector sits
between them). Compiled (``distill.compile``), every module's forward is one graph and every backward one more:
two calls a step instead of two per module. Values and gradients equal the reference's to float rounding
(tests/test_local_losses.py; under bf16 the feature difference is taken in float32 here, where the reference
rounds it to bf16 to save less for backward). Forms the fused twin does not cover (another feature form, spatial
weighting, a feature pyramid, grids that differ between the feature and its target) take the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lakd.distill.ndam import (
    NATIVE,
    accumulator,
    coarse_size,
    common_grid,
    ndam_loss,
    ndam_map,
    pool_map,
    spatial_weights,
)

# -- the reference: each local loss through autograd, every form (the study's too) -------------------------------

FEAT_FORMS = ("mse", "channel_norm", "cosine")


def channel_standardise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel to zero mean / unit variance over (batch, H, W): a BatchNorm without parameters or memory."""
    return F.batch_norm(x, None, None, training=True, eps=eps)


def feature_loss(
    s: torch.Tensor, t: torch.Tensor, form: str = "mse", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Distance between projected student and teacher features (B, C, H, W), averaged over positions.

    ``mse``: mean squared error. ``channel_norm``: the same after ``channel_standardise`` of both sides, so every
    teacher channel counts equally whatever its scale. ``cosine``: ``1 - cos`` between the channel vectors at each
    position (scale-free per position). ``weights`` (B, 1, H, W) re-weights positions (mean 1).
    """
    if form == "mse" and weights is None:
        # In the inputs' dtype (bf16 under autocast) with a float32 sum: the only tensor saved for backward is the
        # difference, no float32 copy of either side (F.mse_loss would make both under autocast).
        return torch.linalg.vector_norm(s - t, dtype=accumulator(s)).square() / s.numel()
    s, t = s.float(), t.float()
    if form == "channel_norm":
        s, t = channel_standardise(s), channel_standardise(t)
    if form == "cosine":
        per_position = 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)[:, None]  # (B, 1, H, W)
        return (per_position * weights).mean() if weights is not None else per_position.mean()
    if weights is not None:
        return ((s - t).pow(2) * weights).mean()
    return F.mse_loss(s, t)


def pyramid_feature_loss(
    s: torch.Tensor, t: torch.Tensor, form: str, weights: torch.Tensor | None, scales: list[int]
) -> torch.Tensor:
    """``feature_loss`` averaged over grids: 0 = the native grid, n = both sides average-pooled to n x n.

    Coarse grids compare regional means, which a student can match even where it cannot match every position; a
    grid at least as fine as the map is the native grid (never up-sampled).
    """
    total = s.new_zeros(())
    for scale in scales:
        if scale == NATIVE or scale >= min(s.shape[-2:]):
            total = total + feature_loss(s, t, form, weights)
            continue
        grid = (scale, scale)
        w = F.adaptive_avg_pool2d(weights, grid) if weights is not None else None
        total = total + feature_loss(F.adaptive_avg_pool2d(s, grid), F.adaptive_avg_pool2d(t, grid), form, w)
    return total / len(scales)


def local_loss_terms(
    feat: torch.Tensor, s: torch.Tensor, t_feat: torch.Tensor, t_target: torch.Tensor,
    feat_on: bool, form: str, spatial: bool, feat_scales: list[int],
    ndam_on: bool, p: float, ndam_scales: list[int], mode: str, tau: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One module's unweighted feature loss (``s``, the projected ``feat``, against ``t_target``) and NDAM loss
    (``feat`` against ``t_feat``); ``None`` for a term that is off.

    Both in one function so that, compiled, one graph reads each feature once for both terms and writes one
    gradient for it instead of two passes and a sum of their gradients.
    """
    feat_term = nd_term = None
    if feat_on:
        h, w = min(s.shape[-2], t_target.shape[-2]), min(s.shape[-1], t_target.shape[-1])
        if s.shape[-2:] != (h, w):
            s = F.adaptive_avg_pool2d(s, (h, w))
        if t_target.shape[-2:] != (h, w):
            t_target = F.adaptive_avg_pool2d(t_target, (h, w))
        weights = spatial_weights(t_feat, (h, w), p) if spatial else None
        feat_term = pyramid_feature_loss(s, t_target, form, weights, feat_scales)
    if ndam_on:
        nd_term = ndam_loss(feat, t_feat, p, ndam_scales, mode, tau)
    return feat_term, nd_term



# -- the fused twin: LAKD's own forms, a hand-derived backward ----------------------------------------------------

@dataclass(frozen=True)
class LocalTermsRequest:
    """One module's local loss terms to compute.

    ``feat`` is the module's output (NDAM reads it); ``projected`` what the feature loss compares with
    ``target`` (``None`` when it is ``feat`` itself: no projector); ``t_feat`` the teacher feature NDAM reads.
    A term that is off has its tensors ``None``.
    """

    feat: torch.Tensor
    projected: torch.Tensor | None
    target: torch.Tensor | None
    t_feat: torch.Tensor | None

    @property
    def feat_on(self) -> bool:
        return self.target is not None

    @property
    def ndam_on(self) -> bool:
        return self.t_feat is not None


def _pool_backward(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to ``like`` (B, H, W) of ``pool_map(like, grad.shape[-2:])``, given ``grad``."""
    (b, h, w), (gh, gw) = like.shape, grad.shape[-2:]
    if (gh, gw) == (h, w):
        return grad
    if h % gh == 0 and w % gw == 0:  # pool_map's fixed window: each input cell gets its window's share
        kh, kw = h // gh, w // gw
        return grad[:, :, None, :, None].expand(b, gh, kh, gw, kw).reshape(b, h, w) / (kh * kw)
    return torch.ops.aten._adaptive_avg_pool2d_backward(grad[:, None].contiguous(), like[:, None])[:, 0]


def map_loss_and_grad(
    a_s: torch.Tensor, a_t: torch.Tensor, scales: Sequence[int], mode: str, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lakd.distill.ndam.map_loss(a_s, a_t, scales, mode, tau)`` and its gradient with respect to ``a_s``.

    Per scale, with ``v`` the pooled map (B, N): ``l2`` is ``mean_b |u_s - u_t|^2`` with ``u = v / max(|v|, eps)``,
    whose gradient is ``(g - u (u . g)) / |v|`` for ``g = 2 (u_s - u_t) / B`` (``g / eps`` below eps); ``kl``
    is ``tau^2 mean_b KL(p_t || p_s)`` with ``p = softmax(v / tau)``, whose gradient is ``tau (p_s - p_t) / B``.
    Pooling's gradient spreads each cell's back over its window.
    """
    eps = 1e-12  # F.normalize's
    common_s, common_t = common_grid(a_s, a_t)
    grid = tuple(common_s.shape[-2:])
    batch = a_s.shape[0]
    total = a_s.new_zeros(())
    grad_common = torch.zeros_like(common_s)
    for scale in scales:
        size = coarse_size(common_s, scale)
        ps = pool_map(common_s, size) if size != grid else common_s
        pt = pool_map(common_t, size) if size != grid else common_t
        vs, vt = ps.flatten(1), pt.flatten(1)
        if mode == "l2":
            norm_s = vs.norm(dim=1, keepdim=True)
            us, ut = vs / norm_s.clamp_min(eps), vt / vt.norm(dim=1, keepdim=True).clamp_min(eps)
            total = total + (us - ut).pow(2).sum(dim=1).mean()
            g = 2.0 * (us - ut) / batch
            g_v = torch.where(norm_s > eps, (g - us * (us * g).sum(dim=1, keepdim=True)) / norm_s.clamp_min(eps),
                              g / eps)
        elif mode == "kl":
            log_ps, log_pt = torch.log_softmax(vs / tau, dim=1), torch.log_softmax(vt / tau, dim=1)
            total = total + (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * tau**2
            g_v = tau * (log_ps.exp() - log_pt.exp()) / batch
        else:
            raise ValueError(f"unknown NDAM loss mode '{mode}' (l2 or kl)")
        grad_common = grad_common + _pool_backward(g_v.view_as(ps), common_s)
    return total, _pool_backward(grad_common, a_s)


Item = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def fused_forward(
    items: list[Item], p: float, scales: Sequence[int], mode: str, tau: float
) -> list[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """Per module ``(feature loss, NDAM loss, dNDAM/dmap)``; ``None`` for a term that is off.

    Items are ``(feat, projected or None, target or None, t_feat or None)``. A pure function of tensors: the
    unit that ``torch.compile`` compiles.
    """
    out: list[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]] = []
    for feat, projected, target, t_feat in items:
        feat_term = nd_term = map_grad = None
        if target is not None:
            s = feat if projected is None else projected
            acc = accumulator(s)  # the difference too (no graph to save it for: it is never materialised compiled)
            feat_term = torch.linalg.vector_norm(s.to(acc) - target.to(acc)).square() / s.numel()
        if t_feat is not None:
            nd_term, map_grad = map_loss_and_grad(ndam_map(feat, p), ndam_map(t_feat, p), scales, mode, tau)
        out.append((feat_term, nd_term, map_grad))
    return out


def fused_backward(
    items: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None,
                      torch.Tensor, torch.Tensor]],
    p: float,
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Per module ``(dL/dfeat, dL/dprojected)`` from ``(feat, projected, target, map_grad, c_feat, c_ndam)``:
    ``c_*`` are the gradients arriving at the two loss values (their weights)."""
    out: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for feat, projected, target, map_grad, c_feat, c_ndam in items:
        acc = accumulator(feat)
        g_feat = g_projected = None
        if map_grad is not None:
            f = feat.to(acc)
            slope = 2.0 * f if p == 2 else p * f.abs().pow(p - 1) * f.sign()
            g_feat = (c_ndam / feat.shape[1]) * map_grad[:, None] * slope
        if target is not None:
            s = feat if projected is None else projected
            g_s = (2.0 * c_feat / s.numel()) * (s.to(acc) - target.to(acc))
            if projected is None:
                g_feat = g_s if g_feat is None else g_feat + g_s
            else:
                g_projected = g_s.to(projected.dtype)
        out.append((None if g_feat is None else g_feat.to(feat.dtype), g_projected))
    return out


class _FusedLocalLosses(torch.autograd.Function):
    """Autograd node of ``fused_local_terms``: inputs are 4 per module (see ``Item``), outputs the present terms."""

    @staticmethod
    def forward(ctx: Any, settings: tuple, forward_fn: Callable, backward_fn: Callable, *flat: Any) -> Any:
        p, scales, mode, tau = settings
        items = [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
        results = forward_fn(items, p, scales, mode, tau)
        saved: list[torch.Tensor] = []
        layout = []
        outputs: list[torch.Tensor] = []
        for (feat, projected, target, _), (feat_term, nd_term, map_grad) in zip(items, results, strict=True):
            present = [t for t in (feat, projected, target, map_grad) if t is not None]
            layout.append((projected is not None, target is not None, map_grad is not None))
            saved += present
            outputs += [t for t in (feat_term, nd_term) if t is not None]
        ctx.save_for_backward(*saved)
        ctx.layout, ctx.p, ctx.backward_fn = layout, p, backward_fn
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        saved, grad_iter = iter(ctx.saved_tensors), iter(grads)
        zero = grads[0].new_zeros(())
        items = []
        for has_projected, has_target, has_map in ctx.layout:
            feat = next(saved)
            projected = next(saved) if has_projected else None
            target = next(saved) if has_target else None
            map_grad = next(saved) if has_map else None
            c_feat = next(grad_iter) if has_target else zero
            c_ndam = next(grad_iter) if has_map else zero
            items.append((feat, projected, target, map_grad, c_feat, c_ndam))
        grads_in: list[torch.Tensor | None] = []
        for g_feat, g_projected in ctx.backward_fn(items, ctx.p):
            grads_in += [g_feat, g_projected, None, None]
        return (None, None, None, *grads_in)


def fused_local_terms(
    requests: list[LocalTermsRequest], p: float, scales: Sequence[int], mode: str, tau: float,
    forward_fn: Callable = fused_forward, backward_fn: Callable = fused_backward,
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Unweighted ``(feature loss, NDAM loss)`` of every request (``None`` where off), differentiable with respect
    to ``feat`` and ``projected``. ``forward_fn`` / ``backward_fn``: ``fused_forward`` / ``fused_backward`` or
    their compiled forms."""
    flat: list[Any] = []
    for r in requests:
        flat += [r.feat, r.projected, r.target, r.t_feat]
    outputs = iter(_FusedLocalLosses.apply((p, tuple(scales), mode, tau), forward_fn, backward_fn, *flat))
    return [(next(outputs) if r.feat_on else None, next(outputs) if r.ndam_on else None) for r in requests]
