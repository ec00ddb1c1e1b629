"""CRD and ReviewKD: their losses against hand computations, CRD's memory banks, frozen teacher, any zoo pair,
and one epoch through the real trainer."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from lakd.distill import build_distiller, make_params
from lakd.distill.crd import ContrastMemory, contrast_loss, momentum_update
from lakd.distill.reviewkd import hcl_loss
from lakd.errors import LakdError
from lakd.models import build_model


@pytest.fixture(autouse=True)
def _one_thread(_isolated_cache: None) -> Iterator[None]:
    """Batch-2 CPU steps gain nothing from intra-op threads, and with the cores shared (a training job beside
    the tests) OpenMP's spinning made them ~30x slower; one thread keeps this file fast. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- HCL by hand -----------------------------------------------------------------------------------------


def _block_means(grid: list[list[float]], side: int) -> list[list[float]]:
    """Average pooling of a square grid to ``side x side`` non-overlapping blocks, in plain Python."""
    b = len(grid) // side
    return [[sum(grid[i * b + u][j * b + v] for u in range(b) for v in range(b)) / (b * b) for j in range(side)]
            for i in range(side)]


def _mse(a: list[list[float]], b: list[list[float]]) -> float:
    diffs = [(x - y) ** 2 for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(diffs) / len(diffs)


def _hcl_by_hand(fs: list[list[float]], ft: list[list[float]]) -> float:
    """Full-map MSE (weight 1) + pooled MSEs at 4, 2, 1 (weights 1/2, 1/4, ... over the levels smaller than the
    map), divided by the sum of the weights."""
    total, weight, weight_sum = _mse(fs, ft), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= len(fs):
            continue
        weight /= 2
        total += weight * _mse(_block_means(fs, level), _block_means(ft, level))
        weight_sum += weight
    return total / weight_sum


def _as_tensor(grid: list[list[float]]) -> torch.Tensor:
    return torch.tensor(grid, dtype=torch.float32).view(1, 1, len(grid), len(grid))


def test_hcl_loss_4x4_by_hand() -> None:
    fs = [[float(4 * i + j) for j in range(4)] for i in range(4)]  # 0..15
    ft = [[0.0] * 4 for _ in range(4)]
    # Level 4 is skipped on a 4x4 map (pooling to 4x4 is the map itself). By hand:
    #   full: mean(k^2, k=0..15) = 1240/16 = 77.5
    #   2x2 : block means 2.5, 4.5, 10.5, 12.5 -> (6.25 + 20.25 + 110.25 + 156.25)/4 = 73.25, weight 1/2
    #   1x1 : mean 7.5 -> 56.25, weight 1/4
    #   (77.5 + 36.625 + 14.0625) / 1.75 = 73.25
    assert _hcl_by_hand(fs, ft) == pytest.approx(73.25)
    assert float(hcl_loss([_as_tensor(fs)], [_as_tensor(ft)])) == pytest.approx(73.25)


def test_hcl_loss_8x8_all_levels_and_sum_over_pairs() -> None:
    fs = [[math.sin(i + 2 * j) for j in range(8)] for i in range(8)]
    ft = [[0.1 * i - 0.05 * j * j for j in range(8)] for i in range(8)]
    expected_8 = _hcl_by_hand(fs, ft)  # levels 4, 2, 1 with weights 1/2, 1/4, 1/8; total weight 1.875
    a1, b1 = [[3.0]], [[1.0]]  # a 1x1 map: only the full MSE, (3 - 1)^2 = 4
    got = hcl_loss([_as_tensor(fs), _as_tensor(a1)], [_as_tensor(ft), _as_tensor(b1)])
    assert float(got) == pytest.approx(expected_8 + 4.0, rel=1e-5)


# -- CRD by hand -----------------------------------------------------------------------------------------


def test_contrast_loss_by_hand() -> None:
    # K = 2 negatives, N = 4 samples: K * Pn = 2/4 = 0.5.
    scores = torch.tensor([[2.0, 0.5, 1.0], [1.0, 1.0, 0.25]])
    row0 = -math.log(2.0 / 2.5) - math.log(0.5 / 1.0) - math.log(0.5 / 1.5)
    row1 = -math.log(1.0 / 1.5) - math.log(0.5 / 1.5) - math.log(0.5 / 0.75)
    assert float(contrast_loss(scores, num_data=4)) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_memory_update_one_row_by_hand() -> None:
    new = momentum_update(torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0]]), momentum=0.5)
    # 0.5 * (0.6, 0.8) + 0.5 * (1, 0) = (0.8, 0.4); norm sqrt(0.8)
    n = math.sqrt(0.8 * 0.8 + 0.4 * 0.4)
    assert new.tolist()[0] == pytest.approx([0.8 / n, 0.4 / n])


def test_contrast_memory_scores_by_hand() -> None:
    mem = ContrastMemory(feat_dim=2, labels=torch.tensor([0, 1, 0, 1]), nce_k=2, nce_t=0.5, momentum=0.5)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    mem.memory_t.copy_(rows)
    mem.memory_s.copy_(rows.flip(1))
    e_s, e_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    out_s, out_t = mem(e_s, e_t, torch.tensor([0]), contrast_idx=torch.tensor([[0, 1, 2]]))
    # Student anchor vs teacher bank rows 0, 1, 2: similarities 1, 0, -1 -> exp(s / 0.5).
    raw = [math.exp(2.0), 1.0, math.exp(-2.0)]
    z = sum(raw) / 3 * 4  # Z = N * mean, estimated on this first batch
    assert float(mem.z_s) == pytest.approx(z)
    assert out_s.tolist()[0] == pytest.approx([r / z for r in raw])
    p = [r / z for r in raw]
    k_pn = 2 / 4
    by_hand = -math.log(p[0] / (p[0] + k_pn)) - sum(math.log(k_pn / (q + k_pn)) for q in p[1:])
    assert float(contrast_loss(out_s, 4)) == pytest.approx(by_hand, rel=1e-5)
    # Teacher anchor (0, 1) vs student bank (flipped rows) 0, 1, 2: similarities 1, 0, -1 as well.
    assert float(mem.z_t) == pytest.approx(z)
    # Banks moved at row 0 only: student bank (0, 1) mixed with e_s (1, 0) -> normalised (0.5, 0.5).
    assert mem.memory_s[0].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert mem.memory_t[0].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert torch.equal(mem.memory_t[1:], rows[1:])
    # Z is estimated once: a second batch keeps it.
    mem(e_s, e_t, torch.tensor([1]), contrast_idx=torch.tensor([[1, 2, 3]]))
    assert float(mem.z_s) == pytest.approx(z)


def test_contrast_memory_dense_scores_equal_gathered_ones_with_their_gradients() -> None:
    """Scoring against the whole bank (one matmul) gives the released code's gathered-row scores, the same
    gradients (taken against the banks as they were before the step's update) and the same updated banks."""
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    dense = ContrastMemory(16, labels, nce_k=12, nce_t=0.07, momentum=0.5)
    gathered = ContrastMemory(16, labels, nce_k=12, nce_t=0.07, momentum=0.5)
    gathered.load_state_dict(dense.state_dict())
    gathered.dense_bank_factor = 0  # the released code's way
    assert dense.dense_scores(13) and not gathered.dense_scores(13)
    for step in range(3):  # Z estimated on the first, banks moved by each
        index = torch.randperm(40)[:6]
        rows = dense.sample(index)
        results = []
        for memory in (dense, gathered):
            e_s = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(step)), dim=1)
            e_t = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(99 + step)), dim=1)
            e_s.requires_grad_(), e_t.requires_grad_()
            out_s, out_t = memory(e_s, e_t, index, contrast_idx=rows)
            (contrast_loss(out_s, 40) + contrast_loss(out_t, 40)).backward()
            results.append((out_s.detach(), out_t.detach(), e_s.grad, e_t.grad))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dense.memory_s, gathered.memory_s)
        torch.testing.assert_close(dense.memory_t, gathered.memory_t)
        assert float(dense.z_s) == pytest.approx(float(gathered.z_s), rel=1e-6)


def test_contrast_memory_scores_densely_only_where_the_bank_is_small() -> None:
    cifar = ContrastMemory(4, torch.arange(45000) % 10, nce_k=16384, nce_t=0.07, momentum=0.5)
    assert cifar.dense_scores(16385)
    imagenet_sized = ContrastMemory(1, torch.arange(1_281_167) % 1000, nce_k=16384, nce_t=0.07, momentum=0.5)
    assert not imagenet_sized.dense_scores(16385)


# -- CRD state -------------------------------------------------------------------------------------------


def _crd(num_train_samples: int = 10, **params: object):  # noqa: ANN202
    torch.manual_seed(0)
    labels = torch.arange(num_train_samples) % 3
    return build_distiller("crd", build_model("resnet8", 10), build_model("resnet14", 10), dict(params),
                           train_labels=labels)


def test_crd_memory_buffers_checkpointed_and_updated_at_batch_indices() -> None:
    d = _crd(nce_k=4)
    state = d.state_dict()
    for key in ("contrast.memory_s", "contrast.memory_t", "contrast.z_s", "contrast.z_t"):
        assert key in state
    assert not any(k.startswith("teacher.") for k in state)
    stdv = 1.0 / math.sqrt(128 / 3)
    assert state["contrast.memory_s"].shape == (10, 128)
    assert float(state["contrast.memory_s"].abs().max()) <= stdv
    before_s, before_t = d.contrast.memory_s.clone(), d.contrast.memory_t.clone()
    d.train()
    index = torch.tensor([2, 5, 7])
    _, losses = d.forward_train(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]), 0.0, index=index)
    assert set(losses) == {"ce", "crd"}
    for before, after in ((before_s, d.contrast.memory_s), (before_t, d.contrast.memory_t)):
        changed = (before != after).any(1).nonzero().flatten().tolist()
        assert changed == [2, 5, 7]
        assert after[index].norm(dim=1).tolist() == pytest.approx([1.0] * 3)
    assert float(d.contrast.z_s) > 0 and float(d.contrast.z_t) > 0
    # A fresh distiller restores the banks and Z from the checkpointed state.
    fresh = _crd(nce_k=4)
    fresh.load_state_dict(d.state_dict())
    assert torch.equal(fresh.contrast.memory_s, d.contrast.memory_s)
    assert float(fresh.contrast.z_t) == float(d.contrast.z_t)


def test_crd_negatives_come_from_other_classes_without_replacement() -> None:
    """The released CIFAR recipe: K negatives per sample, all of other classes, K distinct ones per row."""
    from lakd.distill.crd import ContrastMemory

    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 2, 2, 1, 0, 0, 1, 2, 0, 1, 2])  # unbalanced classes
    memory = ContrastMemory(8, labels, nce_k=8, nce_t=0.07, momentum=0.5)
    index = torch.tensor([0, 4, 9, 13, 2])
    for _ in range(20):
        idx = memory.sample(index)
        assert idx.shape == (5, 9) and torch.equal(idx[:, 0], index)
        negatives = idx[:, 1:]
        assert (labels[negatives] != labels[index][:, None]).all()  # never the anchor's class
        assert all(len(set(row.tolist())) == 8 for row in negatives)  # without replacement
        assert int(negatives.min()) >= 0 and int(negatives.max()) < len(labels)
    # Every other-class sample can be drawn: over many draws the anchor 0 (class 0) sees all 13 others.
    seen = set(torch.cat([memory.sample(torch.tensor([0]))[0, 1:] for _ in range(50)]).tolist())
    assert seen == set((labels != 0).nonzero().flatten().tolist())
    # A pool smaller than K: drawn with replacement, still only other classes.
    tiny = ContrastMemory(8, torch.tensor([0, 0, 1]), nce_k=2, nce_t=0.07, momentum=0.5)
    assert (tiny.sample(torch.tensor([0, 1]))[:, 1:] == 2).all()


def test_crd_params_and_errors() -> None:
    assert _crd().nce_k == 9  # 16384 negatives clamped to num_train_samples - 1
    p = make_params("crd", {})
    assert (p.ce_weight, p.crd_weight, p.kd_weight, p.feat_dim, p.nce_k, p.nce_t, p.nce_momentum) == (
        1.0, 0.8, 0.0, 128, 16384, 0.07, 0.5)
    with pytest.raises(LakdError, match="distill.params.nce_t"):
        make_params("crd", {"nce_t": 0.0})
    with pytest.raises(LakdError, match="distill.params.nce_momentum"):
        make_params("crd", {"nce_momentum": 1.5})
    with pytest.raises(LakdError, match="train_labels"):
        build_distiller("crd", build_model("resnet8", 10), build_model("resnet8", 10), {})
    with pytest.raises(LakdError, match="2 classes"):
        build_distiller("crd", build_model("resnet8", 10), build_model("resnet8", 10), {},
                        train_labels=torch.zeros(8, dtype=torch.long))
    with pytest.raises(LakdError, match="index"):
        _crd().forward_train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 0.0)
    d = _crd(nce_k=4, kd_weight=0.9)
    d.train()
    _, losses = d.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 0.0, index=torch.tensor([0, 1]))
    assert set(losses) == {"ce", "crd", "kd"}


def test_reviewkd_params_and_warmup() -> None:
    p = make_params("reviewkd", {})
    assert (p.ce_weight, p.reviewkd_weight, p.warmup_epochs, p.mid_channels) == (1.0, 5.0, 20.0, 0)
    with pytest.raises(LakdError, match="distill.params.mid_channels"):
        make_params("reviewkd", {"mid_channels": -1})
    torch.manual_seed(0)
    d = build_distiller("reviewkd", build_model("resnet8", 10), build_model("resnet14", 10), {}, total_epochs=40)
    d.train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():  # progress e / 40 = epoch e of 40
        at = {e: float(d.forward_train(x, y, e / 40)[1]["reviewkd"]) for e in (0.0, 10.0, 40.0)}
    assert at[0.0] == pytest.approx(at[40.0] / 20, rel=1e-5)  # mdistiller: the first epoch gets 1/20
    assert at[10.0] == pytest.approx(at[40.0] * 11 / 20, rel=1e-5)
    auto = build_distiller("reviewkd", build_model("resnet8", 10), build_model("resnet14", 10), {"mid_channels": 0})
    assert auto.abfs[0].conv1[0].out_channels == 64  # min(512, 64 channels of resnet8's last feature)
    wide = build_distiller("reviewkd", build_model("resnet8x4", 100), build_model("resnet32x4", 100))
    assert wide.abfs[0].conv1[0].out_channels == 256  # the official width for resnet8x4
    shuffle = build_distiller("reviewkd", build_model("shufflenet_v2", 100), build_model("resnet32x4", 100))
    assert shuffle.abfs[0].conv1[0].out_channels == 512  # min(512, 1024)


def test_pair_configs_pin_the_published_per_pair_recipes() -> None:
    """DKD beta and ReviewKD weight per pair, as in mdistiller's configs/cifar100/dkd/* and the official ReviewKD
    CIFAR-100 script; what a pair does not list falls back to the method's published default."""
    from pathlib import Path

    from lakd.config import DistillRunConfig, build_config

    pairs = Path(__file__).resolve().parents[1] / "configs" / "cifar100_pairs"
    expected = {  # pair: (DKD beta, ReviewKD weight)
        "resnet56_resnet20": (2.0, 0.6), "resnet110_resnet32": (2.0, 1.0), "resnet110_resnet20": (8.0, 5.0),
        "resnet32x4_resnet8x4": (8.0, 5.0), "wrn_40_2_wrn_16_2": (6.0, 5.0), "wrn_40_2_wrn_40_1": (6.0, 5.0),
        "vgg13_vgg8": (6.0, 5.0), "vgg13_mobilenetv2": (6.0, 5.0), "resnet32x4_shufflenet_v1": (8.0, 5.0),
        "resnet32x4_shufflenet_v2": (8.0, 8.0), "wrn_40_2_shufflenet_v1": (8.0, 5.0),
    }
    assert {p.stem for p in pairs.glob("*.yaml")} == set(expected)
    for pair, (beta, weight) in expected.items():
        files = [str(pairs / f"{pair}.yaml")]
        dkd = build_config(DistillRunConfig, files, ["distill.method=dkd"]).distill
        assert make_params("dkd", dkd.resolved_params()).beta == beta, pair
        rkd = build_config(DistillRunConfig, files, ["distill.method=reviewkd"]).distill
        assert make_params("reviewkd", rkd.resolved_params()).reviewkd_weight == weight, pair
        kd = build_config(DistillRunConfig, files, ["distill.method=kd"]).distill
        make_params("kd", kd.resolved_params())  # another method's entry never leaks into KD


# -- any zoo pair, frozen teacher ------------------------------------------------------------------------

PAIRS = [("resnet32x4", "shufflenet_v2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
         ("vgg13", "mobilenetv2")]


@pytest.mark.parametrize(("teacher_name", "student_name"), PAIRS)
def test_heterogeneous_pairs_forward_backward(teacher_name: str, student_name: str) -> None:
    torch.manual_seed(0)
    student, teacher = build_model(student_name, 10), build_model(teacher_name, 10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 4])
    for method, params, extra in (("crd", {"nce_k": 16}, {"index": torch.tensor([1, 6])}),
                                  ("reviewkd", {}, {})):
        d = build_distiller(method, student, teacher, params, train_labels=torch.arange(8) % 4)
        d.train()
        assert not d.teacher.training  # the teacher stays in eval mode after train()
        student.zero_grad(set_to_none=True)
        logits, losses = d.forward_train(x, y, 1.0, **extra)
        assert logits.shape == (2, 10)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        assert all(p.grad is None for p in teacher.parameters())
        trained = [p for p in d.learnable_parameters() if p.grad is not None]
        assert trained and all(torch.isfinite(p.grad).all() for p in trained)
        # the training-only modules get gradients too
        extra_module = d.embed_s if method == "crd" else d.abfs
        assert all(p.grad is not None for p in extra_module.parameters())


# -- through the real trainer ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "params"), [("crd", {"nce_k": 32}), ("reviewkd", {})])
def test_one_epoch_through_trainer(method: str, params: dict) -> None:
    from lakd.config import RunConfig, build_config
    from lakd.data import load_splits
    from lakd.engine import Trainer, resolve_runtime

    torch.manual_seed(0)
    cfg = build_config(RunConfig, overrides=["train.epochs=1", "train.progress=false", "data.batch_size=32",
                                             "optim.lr=0.05"])
    splits = load_splits("synthetic", val_size=32, synthetic_size=128)
    runtime = resolve_runtime("cpu", "fp32", "false")
    d = build_distiller(method, build_model("resnet8", 10), build_model("resnet14", 10), params,
                        total_epochs=1, train_labels=torch.as_tensor(splits.train.y))
    trainer = Trainer(d, cfg, splits, runtime, None, meta={"arch": "resnet8", "num_classes": 10},
                      log=lambda s: None)
    summary = trainer.fit()
    assert summary["epochs"] == 1
    row = trainer.metrics.rows[-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row[f"train_{method}"])


def test_reviewkd_batch_of_one_is_a_clear_error_and_two_train() -> None:
    """The pooled 1x1 level's fusion BatchNorm cannot take one sample: a LakdError, not a BatchNorm traceback."""
    from lakd.errors import LakdError

    torch.manual_seed(0)
    d = build_distiller("reviewkd", build_model("resnet8", 10), build_model("resnet14", 10))
    d.train()
    assert d.min_batch_size == 2
    with pytest.raises(LakdError, match="at least 2 samples"):
        d.forward_train(torch.randn(1, 3, 32, 32), torch.tensor([3]), progress=1.0)
    _, losses = d.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([3, 4]), progress=1.0)
    assert all(torch.isfinite(v) for v in losses.values())
    no_pool = build_distiller("reviewkd", build_model("resnet8", 10), build_model("resnet14", 10),
                              {"pooled_level": False})
    assert no_pool.min_batch_size == 1
    no_pool.train().forward_train(torch.randn(1, 3, 32, 32), torch.tensor([3]), progress=1.0)
