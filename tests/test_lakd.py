"""LAKD: NDAM maps and losses by hand, gradient isolation between local modules, joint == local gradients,
progressive ramp, graph freeing in local mode, heterogeneous pairs, and a real training epoch."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch

from lakd.distill import build_distiller
from lakd.distill.dkd import dkd_loss
from lakd.distill.kd import kd_loss
from lakd.distill.lakd import LAKD
from lakd.distill.lakd import Params as LakdParams
from lakd.distill.local_losses import feature_loss, pyramid_feature_loss
from lakd.distill.ndam import coarse, ndam_loss, ndam_map, pool_map, similarity, spatial_weights
from lakd.engine.memory import SavedTensorMeter
from lakd.errors import LakdError
from lakd.models import build_model


def make_lakd(student: str = "resnet8", teacher: str = "resnet14", **params: object) -> LAKD:
    """LAKD over 10 epochs; SDM for all of them unless ``detach_until`` is given (the tests probe epoch 5)."""
    torch.manual_seed(0)
    params.setdefault("detach_until", 1.0)
    core = {f.name for f in dataclasses.fields(LakdParams)}
    method = "lakd" if set(params) <= core else "lakd-study"  # a study variant's field -> the study method
    d = build_distiller(method, build_model(student, 10), build_model(teacher, 10), dict(params), total_epochs=10)
    assert isinstance(d, LAKD)
    return d


# -- NDAM by hand ----------------------------------------------------------------------------------------
def test_ndam_map_by_hand() -> None:
    f = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 0.0], [2.0, -1.0]]]])  # B=1, C=2, 2x2
    # mean over channels of |F|^2: [(1+1)/2, (4+0)/2; (0+4)/2, (9+1)/2]
    torch.testing.assert_close(ndam_map(f, 2.0), torch.tensor([[[1.0, 2.0], [2.0, 5.0]]]))
    # p = 1: [(1+1)/2, (2+0)/2; (0+2)/2, (3+1)/2]; sign-free: -F gives the same map
    torch.testing.assert_close(ndam_map(-f, 1.0), torch.tensor([[[1.0, 1.0], [1.0, 2.0]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_ndam_map_channels_last_matches_mean_with_gradient(dtype: torch.dtype, p: float) -> None:
    """On channels-last (bf16 or float32) features the map is the float32 channel mean of |F|^p, and so is its
    gradient: the accumulation is float32 from the stored features, the map is never rounded to bf16."""
    torch.manual_seed(0)
    f = torch.randn(2, 16, 5, 5).to(dtype)
    f_cl = f.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    f_ref = f.double().requires_grad_(True)
    m = ndam_map(f_cl, p)
    ref = f_ref.abs().pow(p).mean(dim=1)
    assert m.dtype == torch.float32 and m.shape == (2, 5, 5)
    torch.testing.assert_close(m.double(), ref, rtol=1e-5, atol=1e-6)  # bf16 too: only the inputs are bf16
    g = torch.randn(2, 5, 5, dtype=torch.float64)
    (m * g.float()).sum().backward()
    (ref * g).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # the gradient w.r.t. a bf16 tensor is rounded to bf16
    torch.testing.assert_close(f_cl.grad.double(), f_ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("channels_last", [True, False])
def test_ndam_loss_bf16_near_convergence(channels_last: bool) -> None:
    """Student map within ~1 % of the teacher's: the bf16 loss and gradient match a float64 computation on the
    same (bf16-valued) features. Rounding the maps to bf16 gave errors of tens of percent here."""
    torch.manual_seed(0)
    t0 = torch.randn(8, 64, 8, 8, dtype=torch.float64).relu()
    s0 = (t0 + 0.01 * torch.randn_like(t0)).relu()
    t0, s0 = t0.bfloat16().double(), s0.bfloat16().double()  # what the network holds under autocast
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(dtype: torch.dtype) -> tuple[float, torch.Tensor]:
        s = s0.detach().clone().to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
        loss = ndam_loss(s, t0.to(dtype).contiguous(memory_format=fmt), scales=[0, 4, 2])
        loss.backward()
        return float(loss.detach()), s.grad.double()

    ref_value, ref_grad = run(torch.float64)
    value, grad = run(torch.bfloat16)
    assert ref_value > 0
    assert abs(value - ref_value) / ref_value < 1e-4
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-2


def test_ndam_l2_loss_by_hand() -> None:
    fs = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # map (p=2): [1, 0, 0, 1]
    ft = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # map: [1, 1, 0, 0]
    # native: a_s = [1,0,0,1]/sqrt2, a_t = [1,1,0,0]/sqrt2 -> ||a_s - a_t||^2 = (0 + 1/2 + 0 + 1/2) = 1
    assert float(ndam_loss(fs, ft, scales=[0])) == pytest.approx(1.0)
    # 1x1 scale: both maps pool to one positive number -> normalised to 1 -> distance 0
    assert float(ndam_loss(fs, ft, scales=[1])) == pytest.approx(0.0, abs=1e-7)
    assert float(ndam_loss(fs, ft, scales=[0, 1])) == pytest.approx(1.0)
    assert float(ndam_loss(fs, fs * -3.0, scales=[0, 4, 2])) == pytest.approx(0.0, abs=1e-6)


def test_ndam_kl_loss_by_hand() -> None:
    fs = torch.tensor([[[[1.0, 0.0]]]])  # map [1, 0]
    ft = torch.tensor([[[[0.0, 1.0]]]])  # map [0, 1]
    tau = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (math.exp(0.5) + 1), math.exp(0.5) / (math.exp(0.5) + 1)]
    expected = tau**2 * sum(t * math.log(t / s) for t, s in zip(pt, ps, strict=True))
    assert float(ndam_loss(fs, ft, scales=[0], mode="kl", tau=tau)) == pytest.approx(expected, rel=1e-5)


def test_ndam_across_grids_and_channels() -> None:
    fs, ft = torch.randn(2, 16, 8, 8), torch.randn(2, 64, 4, 4)  # no projector needed
    loss = ndam_loss(fs, ft, scales=[0, 4, 2])
    assert loss.shape == () and float(loss) >= 0
    assert coarse(torch.ones(2, 3, 3), 4).shape == (2, 9)  # never up-samples
    w = spatial_weights(ft, (4, 4))
    assert w.shape == (2, 1, 4, 4) and torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))
    assert similarity(ft, ft * 2).allclose(torch.ones(2))


@pytest.mark.parametrize(("shape", "size"), [((3, 32, 32), (4, 4)), ((2, 8, 8), (2, 2)), ((2, 6, 9), (3, 3)),
                                           ((2, 7, 7), (4, 4)), ((2, 4, 4), (4, 4)), ((1, 8, 4), (2, 1))])
def test_pool_map_is_adaptive_average_pooling(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """The fixed-window path (grids that divide) and the fallback (7 -> 4) give adaptive pooling's values,
    the blocks by hand for one case."""
    m = torch.rand(shape)
    assert torch.equal(pool_map(m, size), torch.nn.functional.adaptive_avg_pool2d(m[:, None], size)[:, 0])
    assert torch.equal(pool_map(m[:1], size), pool_map(m, size)[:1])  # a sample's value is the batch's
    by_hand = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]])  # (1, 2, 4) -> (1, 1, 2)
    torch.testing.assert_close(pool_map(by_hand, (1, 2)), torch.tensor([[[3.5, 5.5]]]))


# -- modules, isolation, backward modes -------------------------------------------------------------------
def _module_params(d: LAKD) -> list[set[int]]:
    """ids of the student parameters owned by each local module (stem in module 0, head in the last)."""
    owned: list[set[int]] = []
    for k, pieces in enumerate(d.pieces):
        ids: set[int] = set()
        if k == 0:
            ids |= {id(p) for p in d.student_model.stem.parameters()}
        for stage_index, start, end in pieces:
            stage = d.student_model.stages[stage_index]
            blocks = [stage] if start is None else list(stage)[start:end]
            for block in blocks:
                ids |= {id(p) for p in block.parameters()}
        if k == d.num_modules - 1:
            ids |= {id(p) for p in d.student_model.head.parameters()}
        ids |= {id(p) for p in d.projectors[k].parameters()}
        owned.append(ids)
    return owned


@pytest.mark.parametrize("split", ["stage", "block"])
def test_module_loss_reaches_only_its_own_module(split: str) -> None:
    d = make_lakd("resnet14", "resnet20", split=split, aux_weight=0.5, progressive=False, kd_weight=0.9)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(x, y, progress=0.5)
    owned = _module_params(d)
    assert d.num_modules == (6 if split == "block" else 3)
    params = list(d.learnable_parameters())
    all_owned = set().union(*owned)
    for k in range(d.num_modules):
        names = [n for n in losses if n.endswith(str(k))] + (["ce", "kd"] if k == d.num_modules - 1 else [])
        total = sum(losses[n] for n in names)
        grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
        touched = {id(p) for p, g in zip(params, grads, strict=True) if g is not None and g.abs().sum() > 0}
        assert touched, f"module {k}'s loss trains nothing"
        student_touched = touched & all_owned
        assert student_touched <= owned[k], f"module {k}'s loss leaked into another module"
        assert student_touched & owned[k]


def test_without_detach_gradients_cross_modules() -> None:
    d = make_lakd(detach=False, backward="joint", progressive=False)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(x, y, progress=0.5)
    stem = list(d.student_model.stem.parameters())
    grads = torch.autograd.grad(losses["ce"], stem, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _step_grads(d: LAKD, x: torch.Tensor, y: torch.Tensor, progress: float = 0.5) -> dict[str, torch.Tensor]:
    d.train()
    d.zero_grad(set_to_none=True)
    d.train_step(x, y, progress, backward=lambda loss: loss.backward())
    return {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}


def test_detach_until_cuts_modules_early_and_joins_them_later() -> None:
    """detach_until = 0.4 of 10 epochs: before epoch 4 the step equals SDM's local step; from epoch 4 on it equals
    the end-to-end (detach = false) step, whose CE gradient reaches the stem."""
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    scheduled = make_lakd(detach_until=0.4, progressive=False)
    sdm, end_to_end = make_lakd(progressive=False), make_lakd(progressive=False, detach=False, backward="joint")
    assert scheduled.detached(0.399) and not scheduled.detached(0.4)
    early, late = _step_grads(scheduled, x, y, 0.3), _step_grads(scheduled, x, y, 0.4)
    want_early, want_late = _step_grads(sdm, x, y, 0.3), _step_grads(end_to_end, x, y, 0.4)
    for name in want_early:
        torch.testing.assert_close(early[name], want_early[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(late[name], want_late[name], rtol=1e-4, atol=1e-6, msg=name)
    stem = [n for n in want_early if n.startswith("student_model.stem.")]
    assert stem and any((late[n] - early[n]).abs().max() > 1e-6 for n in stem)  # the switch changed something


def test_feat_modules_choose_who_gets_the_feature_loss() -> None:
    d = make_lakd("resnet8", "resnet8x4", feat_modules=[0, -1])  # channels differ: projectors are real
    _, losses = d.forward_train(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)), 0.5)
    assert {n for n in losses if n.startswith("feat")} == {"feat0", "feat2"}
    assert not isinstance(d.projectors[0], torch.nn.Identity)
    assert isinstance(d.projectors[1], torch.nn.Identity)  # no loss, no projector (nothing left untrained)
    with pytest.raises(LakdError, match=r"names module 3, but this student has 3 local modules"):
        make_lakd(feat_modules=[3])


def test_feat_projector_always_gives_equal_widths_a_trained_projector() -> None:
    auto, always = make_lakd("resnet8", "resnet14"), make_lakd("resnet8", "resnet14", feat_projector="always")
    assert all(isinstance(p, torch.nn.Identity) for p in auto.projectors)  # same widths: the raw feature
    assert all(isinstance(p[0], torch.nn.Conv2d) for p in always.projectors)
    always.train()
    _, losses = always.forward_train(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)), 0.5)
    grad = torch.autograd.grad(losses["feat1"], always.projectors[1][0].weight)[0]
    assert grad.abs().sum() > 0  # the projector learns from its module's feature loss
    with pytest.raises(LakdError, match="feat_projector"):
        make_lakd(feat_projector="sometimes")


@pytest.mark.parametrize("pair", [("resnet8", "resnet14"), ("wrn_16_1", "wrn_16_2")])
def test_joint_and_local_backward_give_identical_gradients(pair: tuple[str, str]) -> None:
    local = make_lakd(*pair, backward="local", aux_weight=0.3, feat_spatial_weighting=True)
    joint = copy.deepcopy(local)
    joint.params.backward = "joint"
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    g_local, g_joint = _step_grads(local, x, y), _step_grads(joint, x, y)
    assert g_local.keys() == g_joint.keys() and len(g_local) > 10
    assert not any(n.startswith("teacher.") for n in g_local)
    for name in g_local:
        torch.testing.assert_close(g_local[name], g_joint[name], rtol=1e-4, atol=1e-6, msg=name)


def test_local_backward_frees_each_module_graph() -> None:
    """Peak bytes held by autograd for backward: local mode ~ one module, joint mode ~ the whole network."""

    def peak_saved_bytes(mode: str) -> int:
        d = make_lakd("resnet20", "resnet20", backward=mode)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        meter = SavedTensorMeter()
        with meter.track():
            d.train_step(x, y, 0.5, backward=lambda loss: loss.backward())
        assert meter.live == 0  # everything saved was released after backward
        return meter.peak

    local, joint = peak_saved_bytes("local"), peak_saved_bytes("joint")
    assert local < 0.6 * joint, (local, joint)


def test_progressive_ramp_by_hand() -> None:
    d = make_lakd(ramp_stagger=0.1, ramp_length=0.2)  # total_epochs = 10
    assert d.ramp(0, 0.0) == 0.0 and d.ramp(0, 0.1) == pytest.approx(0.5) and d.ramp(0, 0.2) == 1.0
    assert d.ramp(2, 0.2) == 0.0 and d.ramp(2, 0.3) == pytest.approx(0.5) and d.ramp(2, 0.9) == 1.0
    flat = make_lakd(progressive=False)
    assert flat.ramp(2, 0.0) == 1.0
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    _, losses = d.forward_train(x, y, progress=0.0)
    assert losses["feat2"].item() == 0.0 and losses["ndam2"].item() == 0.0 and losses["ce"].item() > 0


def test_loss_terms_switch_off() -> None:
    d = make_lakd(feat_weight=0.0, kd_weight=0.0)
    _, losses = d.forward_train(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)), 0.5)
    assert set(losses) == {"ndam0", "ndam1", "ndam2", "ce"}


def test_feature_loss_forms_by_hand() -> None:
    # B=2, C=2, 1x1 positions: student channel vectors (1, 0), (0, 2); teacher (1, 1), (0, 1).
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1)
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    # mse: squared differences 0, 1, 0, 1 -> mean 0.5
    assert feature_loss(s, t, "mse").item() == pytest.approx(0.5)
    # cosine: sample 0: cos((1,0),(1,1)) = 1/sqrt2; sample 1: cos((0,2),(0,1)) = 1 -> mean(1 - cos)
    assert feature_loss(s, t, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, rel=1e-5)
    # channel_norm: each channel standardised over the batch (biased var, eps 1e-5):
    # student ch0 (1, 0) -> (1, -1)*c0, ch1 (0, 2) -> (-1, 1)*c1; teacher ch0 (1, 0) -> (1, -1)*c0, ch1 (1, 1) -> 0
    c = lambda var: 1 / math.sqrt(var + 1e-5)  # noqa: E731
    expected = (0 + 0 + (c(1.0) * 1) ** 2 * 2) / 4  # ch0 equal on both sides; ch1 student +-c, teacher 0
    assert feature_loss(s, t, "channel_norm").item() == pytest.approx(expected, rel=1e-4)
    # spatial weights scale each position's error: weight 2 on sample 0, 0 on sample 1 -> mse 2 * 1 / 4
    w = torch.tensor([2.0, 0.0]).view(2, 1, 1, 1)
    assert feature_loss(s, t, "mse", w).item() == pytest.approx(0.5)
    assert feature_loss(s, t, "cosine", w).item() == pytest.approx(2 * (1 - 1 / math.sqrt(2)) / 2, rel=1e-5)
    # The forms are selectable in LAKD and train: every feat term finite and positive.
    for form in ("channel_norm", "cosine"):
        _, losses = make_lakd(feat_form=form, progressive=False).forward_train(
            torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), 0.5)
        assert all(torch.isfinite(losses[f"feat{k}"]) and losses[f"feat{k}"] > 0 for k in range(3))


def test_mse_feature_loss_in_bf16_is_float32_with_the_right_gradient() -> None:
    # Exactly representable in bf16: differences 1, -2, 0.5, 0 -> mean square (1 + 4 + 0.25) / 4 = 1.3125
    s = torch.tensor([1.0, -1.0, 0.5, 3.0], dtype=torch.bfloat16).view(1, 4, 1, 1).requires_grad_(True)
    t = torch.tensor([0.0, 1.0, 0.0, 3.0], dtype=torch.bfloat16).view(1, 4, 1, 1)
    loss = feature_loss(s, t, "mse")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(1.3125)
    loss.backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / 4
    assert s.grad is not None
    torch.testing.assert_close(s.grad.float().flatten(), torch.tensor([0.5, -1.0, 0.25, 0.0]))


def test_pyramid_feature_loss_by_hand() -> None:
    # One 2x2 map, one channel: student [[1, 2], [3, 4]], teacher all 2.5 (the student's mean).
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    t = torch.full((1, 1, 2, 2), 2.5)
    native = (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 4  # 1.25
    assert pyramid_feature_loss(s, t, "mse", None, [0]).item() == pytest.approx(native)
    assert pyramid_feature_loss(s, t, "mse", None, [1]).item() == pytest.approx(0.0)  # the means agree
    assert pyramid_feature_loss(s, t, "mse", None, [0, 1]).item() == pytest.approx(native / 2)
    assert pyramid_feature_loss(s, t, "mse", None, [4]).item() == pytest.approx(native)  # never up-sampled
    _, losses = make_lakd(feat_scales=[0, 4, 2, 1], progressive=False).forward_train(
        torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), 0.5)
    assert all(torch.isfinite(losses[f"feat{k}"]) and losses[f"feat{k}"] > 0 for k in range(3))
    with pytest.raises(LakdError, match="feat_scales"):
        make_lakd(feat_scales=[])


def test_feat_target_preact_matches_the_teacher_before_its_relu() -> None:
    d = make_lakd("resnet8", "resnet14", feat_target="preact", feat_weight=1.0, ndam_weight=0.0, progressive=False)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(x, y, 0.5)
    with torch.no_grad():
        _, pre = d.teacher(x, preact=True)
        _, post = d.teacher(x)
        feat0 = d.run_module(0, x)  # equal widths: identity projector
    assert (pre[0] < 0).any() and not torch.equal(pre[0], post[0])  # the targets really differ
    torch.testing.assert_close(losses["feat0"], feature_loss(feat0.float(), pre[0].float()), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(losses["feat0"], feature_loss(feat0.float(), post[0].float()))
    with pytest.raises(LakdError, match="feat_target"):
        make_lakd(feat_target="logits")


def test_logit_loss_dkd_replaces_kd_at_the_last_module() -> None:
    # logit_warmup_epochs 10 at (0-based) epoch 5, the sixth epoch: 6/10 of kd_weight 1.0 (mdistiller's rule)
    d = make_lakd("resnet8", "resnet14", logit_loss="dkd", dkd_alpha=2.0, dkd_beta=3.0, kd_weight=1.0,
                  logit_warmup_epochs=10.0)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(x, y, 0.5)
    with torch.no_grad():
        t_logits, _ = d.teacher(x)
    expected = 0.6 * dkd_loss(logits.float(), t_logits.float(), y, alpha=2.0, beta=3.0, temperature=4.0)
    torch.testing.assert_close(losses["kd"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(losses["kd"], 0.6 * kd_loss(logits.float(), t_logits.float(), 4.0))
    with pytest.raises(LakdError, match="logit_loss"):
        make_lakd(logit_loss="dist")


def test_teacher_inputs_feed_module_k_the_teacher_stage_k_minus_1() -> None:
    d = make_lakd("resnet8", "resnet14", teacher_inputs_until=0.5, feat_weight=1.0, ndam_weight=0.0,
                  progressive=False)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        _, t_feats = d.teacher(x)
    _, losses = d.forward_train(x, y, progress=0.2)  # 2 of 10 epochs: teacher-fed
    with torch.no_grad():
        fed = d.run_module(1, t_feats[0])  # equal widths and grids: no adapter
    torch.testing.assert_close(losses["feat1"], feature_loss(fed.float(), t_feats[1].float()), rtol=1e-5, atol=1e-6)
    # no gradient reaches module 0 from module 1's loss, and module 1 trains
    d.zero_grad()
    losses["feat1"].backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in d.student_model.stem.parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in d.student_model.stages[1].parameters())
    _, later = d.forward_train(x, y, progress=0.6)  # past teacher_inputs_until: the student's own chain again
    with torch.no_grad():
        own = d.run_module(1, d.run_module(0, x))
    torch.testing.assert_close(later["feat1"], feature_loss(own.float(), t_feats[1].float()), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():  # equal widths: the teacher's own features go in, nothing to warn of
        warnings.simplefilter("error")
        make_lakd("resnet8", "resnet14", teacher_inputs_until=0.5)
    with pytest.raises(LakdError, match="teacher_inputs_until"):
        make_lakd(teacher_inputs_until=0.6, detach_until=0.5)


def test_teacher_inputs_are_adapted_when_widths_differ() -> None:
    with pytest.warns(UserWarning, match=r"teacher_inputs_until=1 .* module\(s\) 1, 2 train on a learned 1x1 adapter"):
        d = make_lakd("wrn_40_1", "wrn_40_2", teacher_inputs_until=1.0, progressive=False)
    d.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    _, losses = d.forward_train(x, y, progress=0.1)
    sum(losses.values()).backward()
    adapter = d.input_adapters[1]
    assert not isinstance(adapter, torch.nn.Identity)
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in adapter.parameters())


def test_bad_params_are_clear() -> None:
    with pytest.raises(LakdError, match="feat_form"):
        make_lakd(feat_form="l1")
    with pytest.raises(LakdError, match="needs detach = true"):
        make_lakd(detach=False, backward="local")
    with pytest.raises(LakdError, match="ndam_mode"):
        make_lakd(ndam_mode="cosine")
    with pytest.raises(LakdError, match="detach_until"):
        make_lakd(detach_until=1.5)
    with pytest.raises(LakdError, match="did you mean 'ndam_weight'"):
        make_lakd(ndam_wieght=1.0)


@pytest.mark.parametrize(
    ("student", "teacher"),
    [("shufflenet_v2", "resnet32x4"), ("wrn_40_1", "wrn_40_2"), ("vgg8", "vgg13"), ("mobilenetv2", "resnet8x4")],
)
def test_heterogeneous_pairs(student: str, teacher: str) -> None:
    torch.set_num_threads(1)
    d = make_lakd(student, teacher)
    d.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    logits, losses = d.train_step(x, y, 0.5, backward=lambda loss: loss.backward())
    assert logits.shape == (2, 10) and all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in d.teacher.parameters())
    assert d.teacher.training is False
    if student == "vgg8":
        assert d.num_modules == 3  # split table groups VGG's five stages


def test_one_epoch_through_the_trainer_local_mode() -> None:
    from lakd.config import RunConfig, build_config
    from lakd.data import load_splits
    from lakd.engine import Trainer, resolve_runtime

    cfg = build_config(RunConfig, overrides=["train.epochs=1", "train.progress=false", "data.batch_size=32",
                                             "optim.lr=0.05"])
    splits = load_splits("synthetic", val_size=32, synthetic_size=128)
    d = make_lakd()
    trainer = Trainer(d, cfg, splits, resolve_runtime("cpu", "fp32", "false"), None,
                      meta={"arch": "resnet8", "num_classes": 10}, log=lambda s: None)
    summary = trainer.fit()
    assert summary["last_test_top1"] is not None
    row = trainer.metrics.rows[0]
    assert {"train_feat0", "train_ndam2", "train_ce"} <= set(row) and "train_kd" not in row  # KD off by default
    assert math.isfinite(row["train_loss"])
    state = d.state_dict()
    assert any(k.startswith("projectors.") for k in state) or all(
        isinstance(p, torch.nn.Identity) for p in d.projectors)
    assert not any(k.startswith("teacher.") for k in state)


def test_channel_norm_at_batch_one() -> None:
    """channel_norm at batch 1 trains on grids > 1x1, and is one clear error where a grid is 1x1."""
    d = make_lakd(feat_form="channel_norm")
    d.train()
    assert d.min_batch_size == 1
    _, losses = d.forward_train(torch.randn(1, 3, 32, 32), torch.tensor([2]), progress=0.5)
    assert all(torch.isfinite(v) for v in losses.values())
    pooled = make_lakd(feat_form="channel_norm", feat_scales=[0, 1])
    pooled.train()
    with pytest.raises(LakdError, match="at least 2 samples"):
        pooled.forward_train(torch.randn(1, 3, 32, 32), torch.tensor([2]), progress=0.5)


def test_logit_stand_switch_on_the_last_module_logit_term() -> None:
    """LAKD's logit term with logit standardisation: KD on z-scored logits, invariant to shift and scale."""
    from lakd.distill.kd import standardise_logits

    d = make_lakd("resnet8", "resnet14", kd_weight=1.0, logit_stand=True, temperature=2.0)
    logits = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]])
    t_logits = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.5, 2.0]])
    y = torch.tensor([0, 2])
    value = d.logit_loss(logits, t_logits, y)
    torch.testing.assert_close(value, kd_loss(standardise_logits(logits), standardise_logits(t_logits), 2.0))
    torch.testing.assert_close(d.logit_loss(3 * logits + 5, t_logits - 1, y), value, rtol=1e-5, atol=1e-6)
    plain = make_lakd("resnet8", "resnet14", kd_weight=1.0, temperature=2.0)
    assert not torch.allclose(plain.logit_loss(3 * logits + 5, t_logits, y), plain.logit_loss(logits, t_logits, y))


def test_teacher_tail_auxiliary_reaches_only_its_module() -> None:
    """aux_head teacher_tail: module k's projected feature runs through the frozen teacher's later stages; its
    loss reaches module k (and its projector) only, never the teacher or another student module."""
    d = make_lakd("resnet8", "resnet14", aux_weight=1.0, aux_head="teacher_tail", progressive=False,
                  feat_weight=0.0, ndam_weight=0.0)
    d.train()
    assert len(d.aux_heads) == 0 and d.teacher_index == [0, 1, 2]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(x, y, progress=0.5)
    assert {"aux0", "aux1"} <= set(losses)
    owned = _module_params(d)
    for k in range(d.num_modules - 1):
        d.zero_grad(set_to_none=True)
        losses[f"aux{k}"].backward(retain_graph=True)
        reached = {id(p) for p in d.learnable_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached and reached <= owned[k], k
        assert all(p.grad is None for p in d.teacher.parameters())
    # the value: CE of the teacher's stages 1-2 + head applied to module 0's output (identity projector here)
    with torch.no_grad():
        d.eval()
        feat0 = d.run_module(0, x)
        h = feat0
        for j in (1, 2):
            h, _ = d.teacher._stage_forward(j, h)
        torch.testing.assert_close(d.teacher_tail(0, feat0), d.teacher.head(h))
    with pytest.raises(LakdError, match="aux_head"):
        make_lakd(aux_head="mlp")

