"""Every shipped config parses, validates, and names known models/methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakd.config import DistillRunConfig, RunConfig, build_config
from lakd.distill import make_params
from lakd.models import list_models

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = sorted((CONFIGS / "methods").glob("*.yaml"))
PAIRS = sorted((CONFIGS / "cifar100_pairs").glob("*.yaml"))


@pytest.mark.parametrize("teacher_cfg", ["cifar10_teacher.yaml", "cifar100_teacher.yaml", "cifar100_cpu_teacher.yaml",
                                         "cifar10_teacher_akamaster.yaml"])
def test_teacher_configs(teacher_cfg: str) -> None:
    cfg = build_config(RunConfig, [str(CONFIGS / teacher_cfg)])
    assert cfg.model.name in list_models()


@pytest.mark.parametrize("protocol_cfg", ["cifar10_cpu.yaml", "cifar100_cpu.yaml"])
@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
def test_cpu_protocols_with_every_method(protocol_cfg: str, method: Path) -> None:
    cfg = build_config(DistillRunConfig, [str(CONFIGS / protocol_cfg), str(method)])
    assert cfg.distill.method == method.stem.split("_")[0] and cfg.model.name == "resnet20" and cfg.train.epochs == 3
    assert cfg.data.dataset == protocol_cfg.split("_")[0]
    make_params(cfg.distill.method, cfg.distill.params)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.stem)
def test_cifar100_crd_pairs(pair: Path) -> None:
    files = [str(CONFIGS / "cifar100_crd.yaml"), str(pair), str(CONFIGS / "methods" / "kd.yaml")]
    cfg = build_config(DistillRunConfig, files)
    teacher_arch = Path(cfg.distill.teacher).parent.name.removeprefix("teacher-")
    assert cfg.model.name in list_models() and teacher_arch in list_models()
    light = cfg.model.name.startswith(("mobilenet", "shufflenet"))
    assert cfg.optim.lr == (0.01 if light else 0.05) and cfg.train.epochs == 240 and cfg.data.batch_size == 64


@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
def test_cifar10_strong_with_every_method(method: Path) -> None:
    """The strong protocol: 15 epochs, the resnet56 -> resnet20 per-pair settings, warm-ups at 20/240 of training."""
    cfg = build_config(DistillRunConfig, [str(CONFIGS / "cifar10_strong.yaml"), str(method)])
    assert cfg.train.epochs == 15 and cfg.model.name == "resnet20" and cfg.data.val_size == 5000
    params = make_params(cfg.distill.method, cfg.distill.resolved_params())
    if cfg.distill.method in ("dkd", "reviewkd", "nd"):
        assert params.warmup_epochs == 1.25
    if method.stem == "dkd":
        assert params.beta == 2.0
    if method.stem == "reviewkd":
        assert params.reviewkd_weight == 0.6 and params.mid_channels == 0
