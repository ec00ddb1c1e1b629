"""Standard KD baselines (KD, FitNet, AT, RKD, DKD): losses against hand computations, contract, zoo pairs."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from lakd.distill import build_distiller
from lakd.distill.at import at_loss, at_map, paired_stages
from lakd.distill.dkd import dkd_loss
from lakd.distill.fitnet import ConvRegressor, fitnet_loss, resolve_stages
from lakd.distill.kd import kd_loss
from lakd.distill.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from lakd.errors import LakdError
from lakd.models import build_model

METHODS = ["kd", "fitnet", "at", "rkd", "dkd"]
TRAINER_METHODS = [*METHODS, "dist", "nd"]  # one epoch through the trainer


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One intra-op thread: these tiny batches gain nothing from more, and the machine may be busy."""
    torch.set_num_threads(1)


# -- plain-Python references ---------------------------------------------------------------------------------
def py_softmax(z: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in z]
    total = sum(exps)
    return [e / total for e in exps]


def py_kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum p log(p / q)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def py_smooth_l1(a: list[float], b: list[float]) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        d = abs(x - y)
        total += 0.5 * d * d if d < 1.0 else d - 0.5
    return total / len(a)


# -- KD --------------------------------------------------------------------------------------------------------
def test_kd_loss_matches_hand_computation() -> None:
    s = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
    t = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.5]]
    temperature = 2.0
    expected = sum(py_kl(py_softmax(ti, temperature), py_softmax(si, temperature)) for si, ti in zip(s, t, strict=True))
    expected = expected / 2 * temperature**2
    got = kd_loss(torch.tensor(s), torch.tensor(t), temperature)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits() -> None:
    z = torch.randn(4, 10)
    assert float(kd_loss(z, z.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


# -- AT --------------------------------------------------------------------------------------------------------
def test_at_map_and_loss_match_hand_computation() -> None:
    ft = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # 1x1x2x2
    norm = math.sqrt(1 + 16 + 81 + 256)
    a_t = [1 / norm, 4 / norm, 9 / norm, 16 / norm]
    assert at_map(ft, 2.0)[0].tolist() == pytest.approx(a_t, rel=1e-6)
    # two channels: the map is the channel mean of the squares
    fs = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # 1x2x2x2
    m = [1.0, 0.5, 0.5, 1.0]
    norm_s = math.sqrt(sum(v * v for v in m))
    a_s = [v / norm_s for v in m]
    assert at_map(fs, 2.0)[0].tolist() == pytest.approx(a_s, rel=1e-6)
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)) / 4
    assert float(at_loss(fs, ft, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_at_loss_zero_for_identical_features_and_pools_mismatched_sizes() -> None:
    f = torch.rand(2, 8, 4, 4)
    assert float(at_loss(f, f.clone())) == pytest.approx(0.0, abs=1e-9)
    big, small = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)
    pooled = F.avg_pool2d(big, 2)
    assert float(at_loss(big, small)) == pytest.approx(float(at_loss(pooled, small)), rel=1e-6)
    assert float(at_loss(small, big)) == pytest.approx(float(at_loss(small, pooled)), rel=1e-6)


def test_at_pairs_the_last_stages() -> None:
    assert paired_stages(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert paired_stages(4, 5) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_at_stage_lists_are_the_peers() -> None:
    """mdistiller feats[1:] / RepDistiller feat[1:-1]: ResNets use their 3 stages, VGG its conv groups 1-4."""
    resnets = build_distiller("at", build_model("resnet20", 100), build_model("resnet56", 100))
    assert resnets.pairs == [(0, 0), (1, 1), (2, 2)]
    vggs = build_distiller("at", build_model("vgg8", 100), build_model("vgg13", 100))
    assert vggs.pairs == [(1, 1), (2, 2), (3, 3), (4, 4)]
    vgg_mv2 = build_distiller("at", build_model("mobilenetv2", 100), build_model("vgg13", 100))
    assert vgg_mv2.pairs == [(0, 1), (1, 2), (2, 3), (3, 4)]


# -- RKD -------------------------------------------------------------------------------------------------------
T_POINTS = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0)]  # distances 3, 4, 5
S_POINTS = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]  # distances 1, 1, sqrt 2


def py_distance_matrix(points: list[tuple[float, float]]) -> list[float]:
    d = [math.hypot(a[0] - b[0], a[1] - b[1]) for a in points for b in points]
    mean = sum(v for v in d if v > 0) / sum(1 for v in d if v > 0)
    return [v / mean for v in d]


def py_cosines(points: list[tuple[float, float]]) -> list[float]:
    """cos of the angle at ``a`` between ``b - a`` and ``c - a``; 0 when either vector is zero."""
    out = []
    for a in points:
        for b in points:
            for c in points:
                u = (b[0] - a[0], b[1] - a[1])
                v = (c[0] - a[0], c[1] - a[1])
                nu, nv = math.hypot(*u), math.hypot(*v)
                out.append(0.0 if nu == 0 or nv == 0 else (u[0] * v[0] + u[1] * v[1]) / (nu * nv))
    return out


def test_rkd_distance_loss_matches_hand_computation() -> None:
    t = py_distance_matrix(T_POINTS)
    assert sorted(t)[3:] == pytest.approx([0.75, 0.75, 1.0, 1.0, 1.25, 1.25])  # mean distance 4
    expected = py_smooth_l1(py_distance_matrix(S_POINTS), t)
    got = rkd_distance_loss(torch.tensor(S_POINTS), torch.tensor(T_POINTS))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    d = pairwise_distances(torch.tensor(T_POINTS))
    assert d.flatten().tolist() == pytest.approx([0, 3, 4, 3, 0, 5, 4, 5, 0], abs=1e-5)


def test_rkd_angle_loss_matches_hand_computation() -> None:
    expected = py_smooth_l1(py_cosines(S_POINTS), py_cosines(T_POINTS))
    assert expected > 0
    got = rkd_angle_loss(torch.tensor(S_POINTS), torch.tensor(T_POINTS))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_rkd_losses_invariant_to_scale_and_finite_gradients_on_duplicates() -> None:
    e = torch.randn(5, 7)
    assert float(rkd_distance_loss(3.0 * e, e)) == pytest.approx(0.0, abs=1e-6)
    assert float(rkd_angle_loss(3.0 * e, e)) == pytest.approx(0.0, abs=1e-6)
    shifted, other = e + 20.0, torch.randn(5, 7)  # far from the origin: a bf16 Gram matrix would cancel badly
    reference = float(rkd_distance_loss(shifted, other)), float(rkd_angle_loss(shifted, other))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = float(rkd_distance_loss(shifted, other)), float(rkd_angle_loss(shifted, other))
    assert under_autocast == pytest.approx(reference, rel=1e-5)
    dup = torch.ones(3, 4, requires_grad=True)  # identical embeddings: the sqrt must not produce NaN grads
    (rkd_distance_loss(dup, torch.randn(3, 4)) + rkd_angle_loss(dup, torch.randn(3, 4))).backward()
    assert torch.isfinite(dup.grad).all()


# -- DKD -------------------------------------------------------------------------------------------------------
def test_dkd_loss_matches_hand_computation() -> None:
    s, t, target, temperature, alpha, beta = [2.0, 1.0, 0.0], [3.0, 0.0, 1.0], 0, 2.0, 1.0, 8.0
    ps, pt = py_softmax(s, temperature), py_softmax(t, temperature)
    tckd = py_kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    # NCKD: the distribution over the non-target classes only (softmax of their logits / T)
    nckd = py_kl(py_softmax(t[1:], temperature), py_softmax(s[1:], temperature))
    expected = (alpha * tckd + beta * nckd) * temperature**2
    got = dkd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([target]), alpha, beta, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_dkd_loss_saturated_softmax_is_finite() -> None:
    s = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = dkd_loss(s, torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_warmup_scales_the_loss() -> None:
    torch.manual_seed(0)
    d = build_distiller("dkd", build_model("resnet8", 10), build_model("resnet8", 10), {"warmup_epochs": 20},
                        total_epochs=40)  # progress e / 40 = epoch e
    d.eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.no_grad():
        full = dkd_loss(d.student_model(x)[0], d.teacher(x)[0], y, 1.0, 8.0, 4.0)
        assert float(full) > 0
        losses = {e: float(d.forward_train(x, y, e / 40)[1]["dkd"]) for e in (0.0, 0.9, 10.0, 18.5, 19.0, 35.0)}
    # mdistiller: epochs numbered from 1, factor min(epoch / 20, 1) constant within an epoch. Our 0-based epoch
    # index i (fractional inside the epoch) is its epoch i + 1.
    assert losses[0.0] == pytest.approx(float(full) / 20, rel=1e-5)
    assert losses[0.9] == pytest.approx(float(full) / 20, rel=1e-5)
    assert losses[10.0] == pytest.approx(11 / 20 * float(full), rel=1e-5)
    assert losses[18.5] == pytest.approx(19 / 20 * float(full), rel=1e-5)
    assert losses[19.0] == pytest.approx(float(full), rel=1e-5)
    assert losses[35.0] == pytest.approx(float(full), rel=1e-5)


def test_linear_warmup_whole_and_fractional_epochs() -> None:
    from lakd.distill.base import linear_warmup

    assert [linear_warmup(e, 20) for e in (0.0, 0.99, 1.0, 19.0)] == [0.05, 0.05, 0.1, 1.0]
    assert linear_warmup(3.0, 0) == 1.0
    assert linear_warmup(0.25, 0.5) == pytest.approx(0.5)  # shorter than an epoch: continuous ramp
    assert linear_warmup(0.75, 0.5) == 1.0


# -- FitNet ----------------------------------------------------------------------------------------------------
def test_fitnet_regressor_and_loss_match_hand_computation() -> None:
    reg = ConvRegressor((2, 2, 2), (2, 2, 2), kernel_size=1).eval()
    with torch.no_grad():
        reg.conv.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, -1.0]]).view(2, 2, 1, 1))
    reg.bn.eps = 0.0  # running mean 0, var 1, affine (1, 0): BN is the identity in eval mode
    fs = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]], [[0.0, 3.0], [1.0, 1.0]]]])
    ft = torch.tensor([[[[1.0, 0.0], [1.0, 5.0]], [[1.0, 1.0], [0.0, 0.0]]]])
    a, b = fs[0, 0].flatten().tolist(), fs[0, 1].flatten().tolist()
    out0 = [max(2 * ai, 0.0) for ai in a]  # relu(2 a)
    out1 = [max(ai - bi, 0.0) for ai, bi in zip(a, b, strict=True)]  # relu(a - b)
    target = ft[0, 0].flatten().tolist() + ft[0, 1].flatten().tolist()
    expected = sum((o - t) ** 2 for o, t in zip(out0 + out1, target, strict=True)) / 8
    with torch.no_grad():
        assert float(fitnet_loss(reg(fs), ft)) == pytest.approx(expected, rel=1e-6)


def test_fitnet_regressor_handles_resolution_mismatch_and_stage_choice() -> None:
    assert ConvRegressor((4, 8, 8), (6, 4, 4))(torch.rand(2, 4, 8, 8)).shape == (2, 6, 4, 4)
    assert ConvRegressor((4, 2, 2), (6, 4, 4), kernel_size=3)(torch.rand(2, 4, 2, 2)).shape == (2, 6, 4, 4)
    assert resolve_stages(3, 3, -1) == (1, 1)  # middle stage of a CIFAR ResNet, as mdistiller's hint layer 2
    assert resolve_stages(4, 5, -1) == (1, 2)  # vgg13 -> mobilenetv2: aligned from the end (both 8x8)
    assert resolve_stages(3, 3, 2) == (2, 2)
    with pytest.raises(LakdError, match="hint_stage"):
        resolve_stages(3, 3, 3)


# -- the distiller contract ------------------------------------------------------------------------------------
@functools.cache
def zoo(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10)


@pytest.mark.parametrize("method", METHODS)
def test_teacher_frozen_and_losses_fp32_under_autocast(method: str) -> None:
    torch.manual_seed(0)
    d = build_distiller(method, build_model("resnet8", 10), build_model("resnet14", 10), {})
    d.train()
    assert not d.teacher.training and d.student_model.training
    assert not any(k.startswith("teacher.") for k in d.state_dict())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    logits, losses = d.forward_train(x, y, progress=1.0)
    assert logits.shape == (2, 10) and "ce" in losses and len(losses) >= 2
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.learnable_parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d.forward_train(x, y, progress=1.0)
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("teacher,student", [("resnet32x4", "shufflenet_v2"), ("wrn_40_2", "wrn_40_1"),
                                             ("resnet56", "resnet20"), ("vgg13", "mobilenetv2")])
def test_heterogeneous_pairs_build_and_backprop(teacher: str, student: str) -> None:
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    for method in METHODS:
        d = build_distiller(method, zoo(student), zoo(teacher), {}).train()
        d.zero_grad(set_to_none=True)
        _, losses = d.forward_train(x, y, progress=1.0)
        total = sum(losses.values())
        assert torch.isfinite(total), (method, {k: float(v) for k, v in losses.items()})
        total.backward()
        assert all(p.grad is None for p in d.teacher.parameters())
        assert any(p.grad is not None for p in d.student_model.parameters())


@pytest.mark.parametrize("method", TRAINER_METHODS)
def test_one_epoch_through_the_trainer(method: str) -> None:
    from lakd.config import RunConfig, build_config
    from lakd.data import load_splits
    from lakd.engine import Trainer, resolve_runtime

    torch.manual_seed(0)
    cfg = build_config(RunConfig, overrides=["train.epochs=1", "train.progress=false", "data.batch_size=16",
                                             "optim.lr=0.05"])
    splits = load_splits("synthetic", val_size=16, synthetic_size=48, test_limit=16)  # 2 steps of 16
    runtime = resolve_runtime("cpu", "fp32", "false")
    d = build_distiller(method, build_model("resnet8", 10), build_model("resnet14", 10), {}, total_epochs=1,
                        train_labels=torch.as_tensor(splits.train.y))
    trainer = Trainer(d, cfg, splits, runtime, None, meta={"arch": "resnet8", "num_classes": 10},
                      log=lambda s: None)
    summary = trainer.fit()
    assert summary["epochs"] == 1
    row = trainer.metrics.rows[-1]
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
    if method == "nd":
        assert int(d.class_count.sum()) == 32  # both training steps went into the class centers


# -- params ----------------------------------------------------------------------------------------------------
def test_default_params_are_the_published_ones() -> None:
    s, t = zoo("resnet8"), zoo("resnet14")
    p = {m: build_distiller(m, s, t, {}).params for m in METHODS}
    assert (p["kd"].ce_weight, p["kd"].kd_weight, p["kd"].temperature) == (0.1, 0.9, 4.0)
    assert (p["fitnet"].ce_weight, p["fitnet"].feat_weight, p["fitnet"].hint_stage) == (1.0, 100.0, -1)
    assert (p["at"].ce_weight, p["at"].beta, p["at"].p) == (1.0, 1000.0, 2.0)
    assert (p["rkd"].distance_weight, p["rkd"].angle_weight) == (25.0, 50.0)
    assert (p["dkd"].alpha, p["dkd"].beta, p["dkd"].temperature, p["dkd"].warmup_epochs) == (1.0, 8.0, 4.0, 20.0)


def test_bad_params_raise_lakd_error() -> None:
    s, t = zoo("resnet8"), zoo("resnet14")
    with pytest.raises(LakdError, match="did you mean 'temperature'"):
        build_distiller("kd", s, t, {"temprature": 4})
    with pytest.raises(LakdError, match="distill.params.temperature"):
        build_distiller("dkd", s, t, {"temperature": 0})
    with pytest.raises(LakdError, match="distill.params.regressor_kernel"):
        build_distiller("fitnet", s, t, {"regressor_kernel": 2})
    with pytest.raises(LakdError, match="needs a teacher"):
        build_distiller("at", s, None, {})


def test_warm_ups_in_epochs_read_the_epoch_from_the_step_context() -> None:
    """The trainer gives each step its epoch (lakd.engine.step); a method's epoch-based warm-up follows it, and
    matches a distiller built for that many epochs whose loop passes progress only (your own loop)."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def dkd_loss(total_epochs: float, **context: float) -> float:
        torch.manual_seed(1)
        d = build_distiller("dkd", student, teacher, {}, total_epochs=total_epochs)
        _, losses = d.train_step(x, y, 0.05, backward=lambda loss: None, **context)
        return float(losses["dkd"])

    built_for_100 = dkd_loss(100)  # in epoch 6 of 100: 6/20 of DKD's 20-epoch warm-up (mdistiller's rule)
    from_context = dkd_loss(1, epoch=5.0)  # built without the run's length; the step says where it is
    assert from_context == pytest.approx(built_for_100, rel=1e-6)
    assert dkd_loss(1) == pytest.approx(built_for_100 / 6, rel=1e-4)  # progress 0.05 of 1 epoch: in epoch 1, 1/20
