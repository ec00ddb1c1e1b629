"""Model zoo: the StagedModel contract for every registered name, and benchmark parameter counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from lakd.models import MODELS, StagedModel, build_model, list_models, model_input_size

ALL_MODELS = list_models()
IMAGENET_MODELS = ["resnet18", "resnet34", "resnet50"]
RESNET_FAMILY = [name for name in ALL_MODELS if name.startswith("resnet")]
NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def single_intra_op_thread() -> Iterator[None]:
    """Batch-2 tensors are too small to gain from intra-op threads; on a busy 2-core box they lose ~20x.

    Function-scoped on purpose: conftest's autouse fixture sets 2 threads before every test, and conftest
    autouse fixtures run before this module's, so this one has the last word.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _test_input_size(name: str) -> int:
    """CIFAR models at their native 32x32; ImageNet models at 64x64 to keep the suite fast."""
    return 64 if model_input_size(name) == 224 else 32


def _batch(name: str, batch_size: int = 2) -> torch.Tensor:
    size = _test_input_size(name)
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_lists_every_family() -> None:
    assert ALL_MODELS == sorted(MODELS)
    expected = {
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
        "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "shufflenet_v1", "shufflenet_v2",
        "resnet18", "resnet34", "resnet50", "resnet20_a", "resnet32_a", "resnet44_a", "resnet56_a", "resnet110_a",
    }  # fmt: skip
    assert set(ALL_MODELS) == expected


@pytest.mark.parametrize("name", ALL_MODELS)
def test_staged_model_contract(name: str) -> None:
    """One build per model and a single graph (keeps the suite fast): shapes, preact, direct stage calls, backward.

    Train-mode BN only depends on the batch, so repeated passes over ``x`` give the same features.
    """
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES)
    assert isinstance(model, StagedModel)
    x = _batch(name)
    expected_shapes = model.stage_shapes(tuple(x.shape[1:]))
    assert model.training, "stage_shapes must restore training mode"

    logits, post = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert len(post) == len(model.stages) == len(expected_shapes)
    assert [tuple(f.shape[1:]) for f in post] == expected_shapes
    assert all(f.shape[0] == 2 for f in post)

    with torch.no_grad():
        logits_pre, pre = model(x, preact=True)
        # Distillers cut the model into local modules and call the stages directly: that must agree too.
        h = model.stem(x)
        for stage, feat in zip(model.stages, post, strict=True):
            h = stage(h)
            torch.testing.assert_close(h, feat)
        torch.testing.assert_close(model.head(h), logits)

    torch.testing.assert_close(logits_pre, logits)  # preact must not change what flows forward
    assert [f.shape for f in pre] == [f.shape for f in post]
    for index, (p, q) in enumerate(zip(pre, post, strict=True)):
        # Either the stage has no trailing ReLU (same tensor) or post = relu(pre): an in-place op that corrupted
        # the saved preact would break this.
        assert torch.equal(p, q) or torch.equal(F.relu(p), q), f"stage {index}"
    # Every family here ends its last stage with a ReLU.
    assert (post[-1] >= 0).all()
    assert (pre[-1] < 0).any()
    if name in RESNET_FAMILY:
        assert all((p < 0).any() and not torch.equal(p, q) for p, q in zip(pre, post, strict=True))

    (logits.square().mean() + sum(f.mean() for f in post)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# Parameter counts at 100 classes as published in the CRD / DKD tables (in millions), torchvision's at 1000.
PUBLISHED_PARAMS_M = {
    "resnet20": 0.278,
    "resnet56": 0.86,
    "resnet110": 1.73,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "mobilenetv2": 0.81,
    "shufflenet_v1": 0.95,
    "shufflenet_v2": 1.36,
    "resnet18": 11.69,
    "resnet34": 21.80,
    "resnet50": 25.56,
}
# Exact counts of this implementation (torchvision's exact numbers for the ImageNet ResNets).
EXACT_PARAMS = {
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_40_2": 2_255_156,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "vgg13": 9_462_180,
    "vgg8": 3_965_028,
    "mobilenetv2": 812_836,
    "shufflenet_v1": 949_258,
    "shufflenet_v2": 1_356_104,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_benchmark(name: str) -> None:
    num_classes = 1000 if name in IMAGENET_MODELS else 100
    with torch.device("meta"):  # shapes only: skips allocating and initialising ~25M weights
        count = sum(p.numel() for p in build_model(name, num_classes).parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS_M[name] * 1e6, rel=0.01)
    assert count == EXACT_PARAMS[name]


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match=r"(?s)did you mean 'resnet32x4'.*Known models:.*wrn_40_2"):
        build_model("resnet32_x4", 10)


def test_names_are_case_insensitive() -> None:
    assert isinstance(build_model("ResNet8", 10), StagedModel)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_invalid_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet8", num_classes)  # type: ignore[arg-type]


def test_model_input_size() -> None:
    assert model_input_size("resnet50") == 224
    assert model_input_size("resnet56") == 32
    assert model_input_size("wrn_40_2") == 32
    with pytest.raises(ValueError, match="unknown model"):
        model_input_size("alexnet")
