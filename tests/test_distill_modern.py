"""DIST, ND and logit standardisation (KD / DKD): losses against hand computations, the contract, resume."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lakd.distill import build_distiller, make_params
from lakd.distill.dist import dist_loss, pearson_rows
from lakd.distill.dkd import dkd_loss
from lakd.distill.kd import kd_loss, standardise_logits
from lakd.distill.nd import ND, kd_warmup, nd_loss
from lakd.errors import LakdError
from lakd.models import build_model
from tests.test_distill_baselines import py_kl, py_softmax  # plain-Python references, shared

MODERN = [("dist", {}), ("nd", {}), ("kd", {"logit_stand": True}), ("dkd", {"logit_stand": True})]
LOSS_NAMES = {"dist": {"ce", "dist"}, "nd": {"ce", "kd", "nd"}, "kd": {"ce", "kd"}, "dkd": {"ce", "dkd"}}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One intra-op thread: these tiny batches gain nothing from more, and the machine may be busy."""
    torch.set_num_threads(1)


@functools.cache
def zoo(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10)



# -- DIST ------------------------------------------------------------------------------------------------------
# Probabilities chosen so the Pearson correlations come out in closed form; the logits are tau * log(p), so that
# softmax(logits / tau) = p exactly.
P_S = [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]
P_T = [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
# inter-class (rows; every row has mean 1/3):
#   row 0: s - 1/3 = (1/6, -1/12, -1/12), t - 1/3 = (1/6, -1/30, -2/15); <.,.> = 1/36 + 1/360 + 2/180 = 1/24,
#          ||s|| = sqrt(6)/12, ||t|| = sqrt(42)/30 -> r0 = (1/24) * 360 / sqrt(252) = 2.5 / sqrt(7)
#   row 1: s - 1/3 = (-1/12, 1/6, -1/12), t - 1/3 = (-2/15, -2/15, 4/15); <.,.> = 2/180 - 2/90 - 4/180 = -1/30,
#          ||s|| = sqrt(6)/12, ||t|| = sqrt(24)/15 -> r1 = (-1/30) * 180 / sqrt(144) = -1/2
INTER = 1 - (2.5 / math.sqrt(7) - 1 / 2) / 2
# intra-class (columns over a batch of two: the centred columns are +-d/2, so r = sign(d_s * d_t), 0 if d_s = 0):
#   class 0: s 0.5 -> 0.25, t 0.5 -> 0.2: same sign, +1; class 1: s up, t down: -1; class 2: s constant: 0
INTRA = 1 - (1 - 1 + 0) / 3


def dist_logits(tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    return tau * torch.tensor(P_S).log(), tau * torch.tensor(P_T).log()


def test_dist_loss_matches_hand_computation() -> None:
    assert INTER == pytest.approx(0.777544, abs=1e-6) and INTRA == 1.0
    s, t = dist_logits(1.0)
    got = dist_loss(s, t, beta=1.0, gamma=1.0, tau=1.0)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(INTER + INTRA, rel=1e-5)
    # beta / gamma weight the two terms, tau^2 scales both (tau 2: the softmax of logits / 2 is again P_S, P_T)
    s, t = dist_logits(2.0)
    assert float(dist_loss(s, t, beta=2.0, gamma=0.5, tau=2.0)) == pytest.approx(4 * (2 * INTER + 0.5 * INTRA),
                                                                                 rel=1e-5)
    assert float(dist_loss(s, t, beta=0.0, gamma=1.0, tau=2.0)) == pytest.approx(4 * INTRA, rel=1e-5)


def test_dist_loss_zero_for_identical_logits_and_finite_gradients() -> None:
    z = torch.randn(5, 10)
    # not exactly 0: the authors' 1e-8 in the Pearson denominator is not small next to the product of the norms of
    # centred probability columns (~1e-4 here); without it a vector's correlation with itself is 1
    assert 0.0 <= float(dist_loss(z, z.clone(), 1.0, 1.0, 1.0)) < 1e-3
    p = torch.softmax(z, dim=1)
    assert pearson_rows(p.t(), p.t().clone(), eps=0.0).tolist() == pytest.approx([1.0] * 10, rel=1e-5)
    # class 2 of the student is constant over the batch: its centred column is zero (norm 0), the grad stays finite
    s, t = dist_logits(4.0)
    s.requires_grad_(True)
    loss = dist_loss(s, t, 1.0, 1.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dist_loss(s.bfloat16(), t.bfloat16(), 1.0, 1.0, 4.0).dtype == torch.float32


def test_dist_rejects_a_batch_of_one() -> None:
    d = build_distiller("dist", zoo("resnet8"), zoo("resnet14"), {}).train()
    assert d.min_batch_size == 2
    with pytest.raises(LakdError, match="at least 2 samples, got 1: its intra-class relation"):
        d.forward_train(torch.randn(1, 3, 32, 32), torch.tensor([0]), progress=0.0)


# -- logit standardisation -------------------------------------------------------------------------------------
def test_standardise_logits_matches_hand_computation() -> None:
    # [1, 2, 3, 6]: mean 3, deviations (-2, -1, 0, 3), unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3
    std = math.sqrt(14 / 3)
    got = standardise_logits(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    assert got[0].tolist() == pytest.approx([-2 / std, -1 / std, 0.0, 3 / std], rel=1e-6)
    assert standardise_logits(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)).dtype == torch.float32


def test_kd_and_dkd_losses_on_standardised_logits_match_hand_computation() -> None:
    # s = [2, 1, 0]: mean 1, deviations (1, 0, -1), unbiased std sqrt(2 / 2) = 1 -> (1, 0, -1)
    # t = [3, 0, 1]: mean 4/3, deviations (5/3, -4/3, -1/3), unbiased variance (25 + 16 + 1) / 9 / 2 = 7/3
    zs, zt = [1.0, 0.0, -1.0], [v / math.sqrt(7 / 3) for v in (5 / 3, -4 / 3, -1 / 3)]
    s, t = standardise_logits(torch.tensor([[2.0, 1.0, 0.0]])), standardise_logits(torch.tensor([[3.0, 0.0, 1.0]]))
    assert s[0].tolist() == pytest.approx(zs, rel=1e-6) and t[0].tolist() == pytest.approx(zt, rel=1e-6)
    temperature = 2.0
    ps, pt = py_softmax(zs, temperature), py_softmax(zt, temperature)
    assert float(kd_loss(s, t, temperature)) == pytest.approx(py_kl(pt, ps) * temperature**2, rel=1e-5)
    # DKD, target class 0: TCKD on (p_0, 1 - p_0), NCKD on the softmax of the other two standardised logits
    tckd = py_kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = py_kl(py_softmax(zt[1:], temperature), py_softmax(zs[1:], temperature))
    expected = (18.0 * tckd + 36.0 * nckd) * temperature**2
    got = dkd_loss(s, t, torch.tensor([0]), 18.0, 36.0, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def _affine_logits(model: torch.nn.Module, scale: float, shift: float) -> None:
    """Make the model output ``scale * z + shift`` (its fc computes W h + b)."""
    with torch.no_grad():
        model.head.fc.weight.mul_(scale)
        model.head.fc.bias.mul_(scale).add_(shift)


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_logit_standardisation_ignores_logit_shift_and_scale(method: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    key = "kd" if method == "kd" else "dkd"
    losses: dict[bool, list[float]] = {}
    for stand in (True, False):
        torch.manual_seed(1)
        d = build_distiller(method, build_model("resnet8", 10), build_model("resnet14", 10),
                            {"logit_stand": stand, "temperature": 2.0}).eval()
        with torch.no_grad():
            before = float(d.forward_train(x, y, progress=1.0)[1][key])
            _affine_logits(d.student_model, 3.0, 5.0)  # z -> 3 z + 5, student and teacher
            _affine_logits(d.teacher, 3.0, 5.0)
            after = float(d.forward_train(x, y, progress=1.0)[1][key])
        losses[stand] = [before, after]
    assert losses[True][0] > 0
    assert losses[True][1] == pytest.approx(losses[True][0], rel=1e-4)
    assert losses[False][1] != pytest.approx(losses[False][0], rel=1e-2)  # plain KD / DKD do see the change


def test_logit_stand_is_off_by_default_and_the_configs_set_the_authors_values() -> None:
    from lakd.config import load_yaml

    assert make_params("kd", {}).logit_stand is False and make_params("dkd", {}).logit_stand is False
    root = Path(__file__).resolve().parents[1] / "configs" / "methods"
    kd = make_params("kd", load_yaml(root / "kd_ls.yaml")["distill"]["params"])
    assert (kd.logit_stand, kd.temperature, kd.kd_weight, kd.ce_weight) == (True, 2.0, 9.0, 0.1)
    dkd = make_params("dkd", load_yaml(root / "dkd_ls.yaml")["distill"]["params"])
    assert (dkd.logit_stand, dkd.temperature, dkd.alpha, dkd.beta, dkd.ce_weight) == (True, 3.0, 18.0, 36.0, 1.0)


# -- ND --------------------------------------------------------------------------------------------------------
def test_nd_loss_matches_hand_computation() -> None:
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 6.0], [0.5, 0.0]])
    centers = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # sample 0: direction (0, 1), <s, e> = 4, max(||s|| 5, ||t|| 6) = 6 -> 1 - 4/6
    # sample 1: direction (1, 1)/sqrt 2, <s, e> = 1/sqrt 2, max(1, 0.5) = 1 -> 1 - 1/sqrt 2
    expected = ((1 - 4 / 6) + (1 - 1 / math.sqrt(2))) / 2
    assert float(nd_loss(s, t, centers)) == pytest.approx(expected, rel=1e-6)
    s.requires_grad_(True)
    zero = torch.zeros(2, 2)  # zero teacher embeddings and centers: finite, not NaN
    loss = nd_loss(s, zero, zero) + nd_loss(torch.zeros(2, 2, requires_grad=True), zero, centers)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_nd_class_centers_are_a_running_mean_then_fixed() -> None:
    d = build_distiller("nd", zoo("resnet8"), zoo("resnet14"), {"center_epochs": 1.0})
    assert d.projector is None and d.class_sum.shape == (10, 64)  # resnet8 and resnet14 are both 64 wide
    e = torch.arange(5 * 64, dtype=torch.float32).view(5, 64) / 100
    # step 1: classes 0 (rows 0, 1) and 1 (row 2); each batch is added before it is used
    got = d._centers_for(e[:3], torch.tensor([0, 0, 1]), epoch=0.0)
    assert torch.allclose(got, torch.stack([(e[0] + e[1]) / 2, (e[0] + e[1]) / 2, e[2]]))
    # step 2: class 0 again (row 3) and class 2 (row 4)
    got = d._centers_for(e[3:], torch.tensor([0, 2]), epoch=0.5)
    assert torch.allclose(got, torch.stack([(e[0] + e[1] + e[3]) / 3, e[4]]))
    assert d.class_count[:4].tolist() == [3, 1, 1, 0]
    # after center_epochs nothing is added; an unseen class (3) uses its mean in the batch
    got = d._centers_for(torch.stack([e[4], e[0], e[2]]), torch.tensor([0, 3, 3]), epoch=1.0)
    assert torch.allclose(got, torch.stack([(e[0] + e[1] + e[3]) / 3, (e[0] + e[2]) / 2, (e[0] + e[2]) / 2]))
    assert d.class_count[:4].tolist() == [3, 1, 1, 0]


def test_nd_given_class_centers_are_used_and_never_updated() -> None:
    centers = torch.randn(10, 64)
    d = ND(zoo("resnet8"), zoo("resnet14"), make_params("nd", {}), class_centers=centers)
    e = torch.randn(3, 64)
    got = d._centers_for(e, torch.tensor([4, 4, 7]), epoch=0.0)
    assert torch.equal(got, centers[[4, 4, 7]]) and torch.equal(d.class_centers(), centers)
    with pytest.raises(LakdError, match=r"class_centers must have shape \(10, 64\)"):
        d.set_class_centers(torch.zeros(10, 32))


def test_nd_forward_is_ce_plus_warmed_up_kd_plus_nd() -> None:
    torch.manual_seed(0)
    d = build_distiller("nd", zoo("resnet8"), zoo("resnet14"), {}, total_epochs=21).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 1, 2, 6])
    with torch.no_grad():
        logits, feats = d.student_model(x)
        t_logits, t_feats = d.teacher(x)
        s_emb, t_emb = feats[-1].mean(dim=(2, 3)), t_feats[-1].mean(dim=(2, 3))
        _, losses = d.forward_train(x, y, progress=10.5 / 21)  # 0-based epoch 10 of a 20-epoch warm-up: half of KD
    centers = torch.stack([t_emb[:2].mean(0), t_emb[:2].mean(0), t_emb[2], t_emb[3]])  # first batch: its own means
    assert float(losses["nd"]) == pytest.approx(2.0 * float(nd_loss(s_emb, t_emb, centers)), rel=1e-5)
    assert float(losses["kd"]) == pytest.approx(0.5 * float(kd_loss(logits, t_logits, 4.0)), rel=1e-5)
    assert float(losses["ce"]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)


def test_nd_kd_warmup_is_the_authors_zero_based_rule() -> None:
    # train_cifar_kd.py: min(1, epoch / 20) with epoch = 0, 1, ...: the first epoch has no KD at all
    assert [kd_warmup(e, 20.0) for e in (0.0, 0.9, 1.0, 10.5, 20.0, 30.0)] == [0.0, 0.0, 0.05, 0.5, 1.0, 1.0]
    assert [kd_warmup(e, 0.5) for e in (0.0, 0.25, 0.5, 2.0)] == [0.0, 0.5, 1.0, 1.0]  # short budgets
    assert kd_warmup(0.0, 0.0) == 1.0


def test_nd_projector_for_different_widths() -> None:
    torch.manual_seed(0)
    d = build_distiller("nd", build_model("resnet8", 10), zoo("wrn_16_2"), {}).train()  # 64 -> 128 wide
    assert d.projector is not None and d.min_batch_size == 2
    assert any(n.startswith("projector.") for n in dict(d.named_parameters()))
    assert {id(p) for p in d.projector.parameters()} <= {id(p) for p in d.learnable_parameters()}
    _, losses = d.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), progress=0.0)
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.projector.parameters())
    with pytest.raises(LakdError, match="at least 2 samples, got 1: the embedding projector"):
        d.forward_train(torch.randn(1, 3, 32, 32), torch.tensor([0]), progress=0.0)


def test_nd_resume_keeps_the_class_centers() -> None:
    torch.manual_seed(0)
    d = build_distiller("nd", build_model("resnet8", 10), zoo("resnet14"), {}).train()
    for _ in range(2):
        d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), progress=0.1)
    state = d.state_dict()
    assert {"class_sum", "class_count", "centers_fixed"} <= set(state)
    assert not any(k.startswith("teacher.") for k in state)
    assert int(state["class_count"].sum()) == 8
    resumed = build_distiller("nd", build_model("resnet8", 10), zoo("resnet14"), {})
    resumed.load_state_dict(state)
    assert torch.equal(resumed.class_sum, d.class_sum) and torch.equal(resumed.class_count, d.class_count)
    assert torch.equal(resumed.class_centers(), d.class_centers())
    given = ND(build_model("resnet8", 10), zoo("resnet14"), make_params("nd", {}), class_centers=torch.ones(10, 64))
    again = build_distiller("nd", build_model("resnet8", 10), zoo("resnet14"), {})
    again.load_state_dict(given.state_dict())
    assert int(again.centers_fixed) == 1  # given centers stay fixed after a resume


def _two_rank_centers(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        d = build_distiller("nd", build_model("resnet8", 10), build_model("resnet14", 10), {})
        e, y = torch.arange(6 * 64, dtype=torch.float32).view(6, 64), torch.tensor([0, 1, 0, 2, 2, 0])
        shard = slice(3 * rank, 3 * rank + 3)
        got = d._centers_for(e[shard], y[shard], epoch=0.0)
        torch.save({"sum": d.class_sum, "count": d.class_count, "got": got}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_nd_centers_are_summed_over_processes(tmp_path: Path) -> None:
    mp.spawn(_two_rank_centers, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    single = build_distiller("nd", zoo("resnet8"), zoo("resnet14"), {})
    e, y = torch.arange(6 * 64, dtype=torch.float32).view(6, 64), torch.tensor([0, 1, 0, 2, 2, 0])
    full = single._centers_for(e, y, epoch=0.0)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"out.{rank}")
        assert torch.equal(r["sum"], single.class_sum) and torch.equal(r["count"], single.class_count)
        assert torch.allclose(r["got"], full[3 * rank:3 * rank + 3])


# -- the contract, all new methods -----------------------------------------------------------------------------
@pytest.mark.parametrize("method,params", MODERN, ids=[m if not p else f"{m}-ls" for m, p in MODERN])
def test_forward_train_losses_and_gradients(method: str, params: dict) -> None:
    torch.manual_seed(0)
    d = build_distiller(method, build_model("resnet8", 10), build_model("resnet14", 10), params).train()
    assert not d.teacher.training and not any(k.startswith("teacher.") for k in d.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 3, 7])
    logits, losses = d.forward_train(x, y, progress=1.0)
    assert logits.shape == (4, 10) and set(losses) == LOSS_NAMES[method]
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(float(v.detach()) > 0 for v in losses.values()), {k: float(v.detach()) for k, v in losses.items()}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    grads = [p.grad for p in d.learnable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d.forward_train(x, y, progress=1.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_default_params_are_the_published_ones() -> None:
    dist = make_params("dist", {})
    assert (dist.ce_weight, dist.kd_weight, dist.beta, dist.gamma, dist.tau) == (1.0, 2.0, 1.0, 1.0, 4.0)
    nd = make_params("nd", {})
    assert (nd.ce_weight, nd.kd_weight, nd.temperature, nd.nd_weight, nd.warmup_epochs) == (1.0, 1.0, 4.0, 2.0, 20.0)
    kd, dkd = make_params("kd", {}), make_params("dkd", {})  # unchanged KD / DKD defaults
    assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 0.9, 4.0)
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (1.0, 8.0, 4.0, 20.0)


@pytest.mark.parametrize("method,key", [("dist", "ce_weight"), ("dist", "kd_weight"), ("dist", "beta"),
                                        ("dist", "gamma"), ("dist", "tau"), ("nd", "ce_weight"),
                                        ("nd", "kd_weight"), ("nd", "nd_weight"), ("nd", "warmup_epochs"),
                                        ("nd", "temperature"), ("nd", "center_epochs")])
def test_make_params_rejects_negative_values(method: str, key: str) -> None:
    with pytest.raises(LakdError, match=f"distill.params.{key} must be"):
        make_params(method, {key: -1.0})


def test_make_params_checks_logit_stand_is_a_bool() -> None:
    with pytest.raises(LakdError, match="expected true/false"):
        make_params("kd", {"logit_stand": "yes"})
    with pytest.raises(LakdError, match="did you mean 'logit_stand'"):
        make_params("dkd", {"logit_standard": True})


