"""LAKD's feature MSE and NDAM loss for several modules at once, with a hand-derived backward.

Autograd through the two losses walks each large feature tensor several times (the difference, the map's norm
and its gradient, the sum of the two terms' gradients). Here the forward reads each feature once, and returns
beside the loss values the gradient of the NDAM loss with respect to the *small* (B, H, W) map (derived by hand:
``map_loss_and_grad``); the backward then writes each feature's gradient in one elementwise pass:

    dL/dF = c_feat * 2 (S - T) / numel  +  c_ndam * g_map * p |F|^(p-1) sign(F) / C

(``S`` the projected student feature, ``T`` the teacher's; the first term goes to ``S`` when a projector sits
between them). Compiled (``distill.compile``), every module's forward is one graph and every backward one more:
two calls a step instead of two per module. Values and gradients equal autograd's through
``lakd.distill.lakd.local_loss_terms`` to float rounding (tests/test_local_losses.py; under bf16 the feature
difference is taken in float32 here, where the autograd path rounds it to bf16 to save less for backward). Forms
this does not cover (another feature form, spatial weighting, a feature pyramid, grids that differ between the
feature and its target) take that autograd path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from lakd.distill.ndam import accumulator, coarse_size, common_grid, ndam_map, pool_map


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
