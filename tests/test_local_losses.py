"""LAKD's fused local losses (lakd.distill.local_losses): the hand-derived gradients against autograd through the
reference losses, by hand on tiny tensors, by finite differences, and inside the distiller (fused == autograd)."""

from __future__ import annotations

import copy

import pytest
import torch

from lakd.distill import build_distiller
from lakd.distill.lakd import LAKD
from lakd.distill.local_losses import LocalTermsRequest, fused_local_terms, local_loss_terms, map_loss_and_grad
from lakd.distill.ndam import NATIVE, map_loss
from lakd.models import build_model


@pytest.mark.parametrize(("student_grid", "teacher_grid"), [(8, 8), (8, 4), (7, 7), (9, 3), (6, 5)])
@pytest.mark.parametrize("mode", ["l2", "kl"])
@pytest.mark.parametrize("scales", [[NATIVE], [NATIVE, 4, 2], [3, 1], [5]])
def test_map_loss_and_grad_equal_autograd(student_grid: int, teacher_grid: int, mode: str, scales: list[int]) -> None:
    """Even and uneven pooling windows, a coarser teacher grid, every mode: value and gradient to float64."""
    torch.manual_seed(0)
    a_s = torch.rand(3, student_grid, student_grid, dtype=torch.float64, requires_grad=True)
    a_t = torch.rand(3, teacher_grid, teacher_grid, dtype=torch.float64)
    want = map_loss(a_s, a_t, scales, mode, 0.7)
    (want_grad,) = torch.autograd.grad(want, a_s)
    got, got_grad = map_loss_and_grad(a_s.detach(), a_t, scales, mode, 0.7)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-13)


def test_map_loss_grad_by_hand() -> None:
    """One sample, two positions, l2 on the native grid: u_s = (3, 4)/5, u_t = (1, 0); loss = |u_s - u_t|^2 =
    (0.6 - 1)^2 + 0.8^2 = 0.8; g = 2 (u_s - u_t) = (-0.8, 1.6), u_s . g = 0.8, so the gradient is
    (g - 0.8 u_s) / 5 = ((-0.8 - 0.48) / 5, (1.6 - 0.64) / 5) = (-0.256, 0.192)."""
    loss, grad = map_loss_and_grad(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[2.0, 0.0]]]), [NATIVE], "l2", 1.0)
    assert float(loss) == pytest.approx(0.8)
    torch.testing.assert_close(grad, torch.tensor([[[-0.256, 0.192]]]))


def test_fused_gradient_by_hand() -> None:
    """F = S = (1, 2) over two channels at one position, T = (0, 0): feature loss |S - T|^2 / 2 = 2.5, gradient
    (S - T) = (1, 2) per unit weight. NDAM on a one-position grid is 0 with zero map gradient (a normalised
    one-element map is always 1), so with both terms the gradient is c_feat * (1, 2)."""
    feat = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).requires_grad_()
    target = torch.zeros(1, 2, 1, 1)
    feat_term, nd_term = fused_local_terms([LocalTermsRequest(feat, None, target, target + 1.0)], 2.0, [NATIVE],
                                           "l2", 1.0)[0]
    assert float(feat_term.detach()) == pytest.approx(2.5) and float(nd_term.detach()) == pytest.approx(0.0)
    (3.0 * feat_term + 5.0 * nd_term).backward()
    torch.testing.assert_close(feat.grad.flatten(), torch.tensor([3.0, 6.0]))


def _reference_and_fused(feat: torch.Tensor, projected: torch.Tensor | None, target: torch.Tensor,
                         t_feat: torch.Tensor, feat_on: bool, ndam_on: bool, p: float, mode: str) -> tuple:
    scales = [NATIVE, 4, 2]
    s = feat if projected is None else projected
    ref = local_loss_terms(feat, s, t_feat, target, feat_on, "mse", False, [NATIVE], ndam_on, p, scales, mode, 0.5)
    fused = fused_local_terms([LocalTermsRequest(feat, projected, target if feat_on else None,
                                                 t_feat if ndam_on else None)], p, scales, mode, 0.5)[0]
    return ref, fused


@pytest.mark.parametrize("p", [2.0, 3.0, 1.5])
@pytest.mark.parametrize("mode", ["l2", "kl"])
@pytest.mark.parametrize(("feat_on", "ndam_on"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("projector", [False, True])
def test_fused_terms_equal_autograd_through_the_reference_losses(
    p: float, mode: str, feat_on: bool, ndam_on: bool, projector: bool
) -> None:
    torch.manual_seed(1)
    feat = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    proj = torch.nn.Conv2d(3, 5, 1, bias=False).double() if projector else None
    t_feat = torch.randn(4, 5 if projector else 3, 4, 4, dtype=torch.float64).relu()
    target = torch.randn(4, 5 if projector else 3, 8, 8, dtype=torch.float64)
    grads = []
    for which in range(2):
        projected = proj(feat) if proj is not None else None
        terms = _reference_and_fused(feat, projected, target, t_feat, feat_on, ndam_on, p, mode)[which]
        assert [t is None for t in terms] == [not feat_on, not ndam_on]
        total = sum(w * t for w, t in zip((3.0, 5.0), terms, strict=True) if t is not None)
        params = [feat, *([proj.weight] if proj is not None and feat_on else [])]
        grads.append((terms, torch.autograd.grad(total, params)))
    (want_terms, want_grads), (got_terms, got_grads) = grads
    for want, got in zip(want_terms, got_terms, strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for want, got in zip(want_grads, got_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_fused_terms_pass_gradcheck_over_several_modules() -> None:
    """Finite differences of the weighted sum over two modules of different shapes, one with a projected input."""
    torch.manual_seed(2)
    f0 = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    f1 = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    s1 = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    t0, t1, target1 = torch.randn(2, 2, 4, 4).double(), torch.randn(2, 4, 2, 2).double(), torch.randn(2, 4, 2, 2)

    def total(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        terms = fused_local_terms([LocalTermsRequest(a, None, t0, t0), LocalTermsRequest(b, c, target1.double(), t1)],
                                  2.0, [NATIVE, 1], "l2", 1.0)
        return sum((i + 1.0) * (j + 2.0) * t for i, pair in enumerate(terms) for j, t in enumerate(pair))

    assert torch.autograd.gradcheck(total, (f0, f1, s1))


def test_fused_terms_in_bf16_match_float32_autograd() -> None:
    """Under bf16 features (as autocast makes them) the gradient is float32 arithmetic rounded once to bf16."""
    torch.manual_seed(3)
    feat32 = torch.randn(8, 16, 8, 8).relu()
    t32 = torch.randn(8, 16, 8, 8).relu()
    feat = feat32.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    t = t32.bfloat16().contiguous(memory_format=torch.channels_last)
    ref_feat = feat.detach().float().requires_grad_()
    ref = local_loss_terms(ref_feat, ref_feat, t.float(), t.float(), True, "mse", False, [NATIVE], True, 2.0,
                           [NATIVE, 4, 2], "l2", 1.0)
    (3.0 * ref[0] + 5.0 * ref[1]).backward()
    got = fused_local_terms([LocalTermsRequest(feat, None, t, t)], 2.0, [NATIVE, 4, 2], "l2", 1.0)[0]
    (3.0 * got[0] + 5.0 * got[1]).backward()
    assert feat.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0].detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1], ref[1].detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(feat.grad.float(), ref_feat.grad, rtol=2**-8, atol=1e-9)


def _step(d: LAKD, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[dict, dict]:
    _, losses = d.train_step(x, y, progress, backward=lambda loss: loss.backward())
    return losses, {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("method", "params", "pair"), [
    ("lakd", {}, ("resnet8", "resnet14")),  # end to end: every module's terms in one fused call
    ("lakd", {"detach_until": 1.0}, ("resnet8", "resnet14")),  # local backward: one call per module
    ("lakd", {}, ("wrn_16_1", "wrn_16_2")),  # projectors (widths differ)
    ("lakd-study", {"aux_weight": 1.0, "aux_head": "teacher_tail", "detach_until": 1.0}, ("resnet8", "resnet14")),
    ("lakd-study", {"ndam_p": 3.0, "ndam_mode": "kl", "feat_weight": 0.0}, ("resnet8", "resnet14")),
])
def test_distiller_fused_equals_autograd(method: str, params: dict, pair: tuple[str, str]) -> None:
    torch.manual_seed(0)
    teacher = build_model(pair[1], 10).eval()
    fused = build_distiller(method, build_model(pair[0], 10), teacher, params, total_epochs=10).train()
    reference = copy.deepcopy(fused)
    reference.fused_local_losses = False
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    (want_losses, want_grads), (got_losses, got_grads) = _step(reference, x, y, 0.7), _step(fused, x, y, 0.7)
    assert list(got_losses) == list(want_losses)  # same names, same order
    for name in want_losses:
        torch.testing.assert_close(got_losses[name], want_losses[name], rtol=1e-6, atol=1e-7, msg=name)
    assert got_grads.keys() == want_grads.keys()
    for name, want in want_grads.items():  # float32 rounding, relative to each gradient's scale
        torch.testing.assert_close(got_grads[name], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()), msg=name)
