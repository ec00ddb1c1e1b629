"""Real torchvision and timm models (random init) through their preset stage specs: every method distils them
for a few steps, LAKD's local modules are isolated by gradients on them, a ViT teaches a CNN, and the CLI trains,
evaluates and exports a torchvision student of a timm teacher. Skipped where torchvision / timm are absent (CI
installs both)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

import lakd  # noqa: E402
from lakd.distill import list_methods  # noqa: E402
from lakd.errors import LakdError  # noqa: E402
from lakd.models import build_model, check_gradient_isolation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)

PRESETS = ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_small",
           "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf", "torchvision:convnext_tiny",
           "timm:resnet18", "timm:mobilenetv3_small_100", "timm:efficientnet_b0", "timm:convnext_atto"]


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_give_four_shrinking_stages_that_cut_cleanly(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10)
    shapes = model.stage_shapes((3, 64, 64))
    assert len(shapes) == 4, (name, model.spec.stages)
    sides = [s[1] for s in shapes]
    assert sides == sorted(sides, reverse=True) and sides[0] == 16 and sides[-1] == 2, (name, shapes)
    assert model.num_classes((3, 64, 64)) == 10
    check_gradient_isolation(model, (3, 64, 64))  # local modules on it are independent


def test_torchvision_vit_preset_reads_tokens_as_a_grid() -> None:
    torch.manual_seed(0)
    vit = build_model("torchvision:vit_b_16", 10, image_size=32)  # patch 16: a 2x2 grid of patch tokens
    assert vit.spec.layout == "tokens" and vit.spec.prefix_tokens == 1
    assert vit.spec.stages == ("encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5",
                               "encoder.layers.encoder_layer_8", "encoder.layers.encoder_layer_11")
    assert vit.stage_shapes(SHAPE) == [(768, 2, 2)] * 4
    x, y = batch()
    d = lakd.distiller("lakd", torchvision.models.resnet18(num_classes=10), vit, input_shape=SHAPE)
    assert torch.isfinite(d.step(x, y, 0.5))


def test_stages_given_instead_of_the_preset() -> None:
    model = build_model("torchvision:resnet18", 10, stages=["layer2", "layer3", "layer4"])
    assert model.spec.stages == ("layer2", "layer3", "layer4") and len(model.stage_shapes(SHAPE)) == 3
    with pytest.raises(LakdError, match="no module 'layer5'"):
        build_model("torchvision:resnet18", 10, stages=["layer4", "layer5"])
    with pytest.raises(ValueError, match="has its own stages"):
        build_model("resnet20", 10, stages=["stages.0"])


def test_every_method_distils_torchvision_from_timm() -> None:
    x, y = batch()
    torch.manual_seed(0)
    resnet18 = torchvision.models.resnet18(num_classes=10)
    teacher = timm.create_model("resnet26", num_classes=10)
    for method in list_methods():
        student = copy.deepcopy(resnet18)
        d = lakd.distiller(method, student, teacher, input_shape=SHAPE, epochs=1,
                           train_labels=torch.arange(64) % 10)
        extra = {"index": torch.arange(len(x))} if d.needs_index else {}
        d.train()
        assert torch.isfinite(d.step(x, y, 0.5, **extra)), method
        assert student.fc.weight.grad.abs().sum() > 0, method
        assert d.student() is student


def test_a_timm_vit_teaches_a_torchvision_cnn() -> None:
    """Heterogeneous: ViT tokens read as a grid; every method trains or refuses with a clear error."""
    x, y = batch()
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4, num_classes=10)
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=10)
    for method in list_methods():
        student = copy.deepcopy(mobilenet)
        try:
            d = lakd.distiller(method, student, vit, input_shape=SHAPE, train_labels=torch.arange(64) % 10)
        except LakdError as exc:  # allowed, if it says why
            assert "vit" in str(exc).lower() or "token" in str(exc).lower(), (method, exc)
            continue
        extra = {"index": torch.arange(len(x))} if d.needs_index else {}
        d.train()
        assert torch.isfinite(d.step(x, y, 0.5, **extra)), method


def test_lakd_local_modules_on_torchvision_are_isolated_by_gradients() -> None:
    torch.manual_seed(0)
    student = torchvision.models.resnet18(num_classes=10)
    d = lakd.distiller("lakd", student, timm.create_model("resnet18", num_classes=10), input_shape=SHAPE,
                       detach_until=1.0, kd_weight=1.0)
    x, y = batch()
    _, losses = d.forward_train(x, y, 0.9)
    owners = {0: ("conv1", "bn1", "layer1."), 1: ("layer2.",), 2: ("layer3.",), 3: ("layer4.", "fc.")}
    for name, loss in losses.items():
        d.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        touched = {n.removeprefix("student_model.model.") for n, p in d.named_parameters()
                   if n.startswith("student_model.") and p.grad is not None and p.grad.abs().sum() > 0}
        k = int(name[-1]) if name[-1].isdigit() else 3
        # (NDAM on layer4's 1x1 grid at 32x32 inputs is constant: no gradient at all)
        assert touched or name == "ndam3", name
        assert all(t.startswith(owners[k]) for t in touched), (name, sorted(touched)[:5])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_cli_distils_a_torchvision_student_from_a_timm_teacher(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    teacher = timm.create_model("resnet18", num_classes=10)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp_path / "t.safetensors"))
    common = ["--dataset", "synthetic", "--epochs", "1", "--batch-size", "32", "--no-progress",
              "data.synthetic_size=192", "data.val_size=64", "train.threads=1"]
    bad = run_cli("distill", "--method", "kd", "--teacher", "timm:resnet18", "--student", "torchvision:resnet18",
                  "--out", "nope", *common, cwd=tmp_path)
    assert bad.returncode == 2 and "--teacher-weights" in bad.stderr and not (tmp_path / "nope").exists()
    result = run_cli("distill", "--method", "lakd", "--teacher", "timm:resnet18", "--teacher-weights",
                     "t.safetensors", "--student", "torchvision:resnet18", "--out", "run", *common,
                     "distill.params.detach_until=1.0", "model.stages=[layer2,layer3,layer4]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["meta"]["arch"] == "torchvision:resnet18" and ckpt["meta"]["stages"] == ["layer2", "layer3", "layer4"]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train_ndam2" in row and "train_ndam3" not in row  # three stages: three local modules
    torchvision.models.resnet18(num_classes=10).load_state_dict(ckpt["model"])  # the user's own keys
    evaluated = run_cli("eval", "--ckpt", "run/best.pt", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0 <= json.loads(evaluated.stdout)["top1"] <= 100
    exported = run_cli("export", "--ckpt", "run/best.pt", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    from safetensors.torch import load_file

    torchvision.models.resnet18(num_classes=10).load_state_dict(load_file(str(tmp_path / "run" / "best.safetensors")))


def test_pretrained_teacher_fine_tuned_to_an_image_folder_then_distilled(tmp_path: Path) -> None:
    """The practitioner's flow: ImageNet-style weights (1,000 classes; random here) -> fine-tuned with a new head
    to a 10-class ImageFolder -> teaches a torchvision student built with its own constructor options."""
    from tests.scripts import write_image_folder

    write_image_folder(tmp_path / "images", 10, {"train": 12, "test": 3})
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "resnet18_imagenet.pth")
    data = ["--dataset", "imagefolder", "data.path=images", "data.val_size=20", "--epochs", "1", "--batch-size",
            "16", "--no-progress", "train.threads=1"]
    strict = run_cli("train", "--model", "torchvision:resnet18", "--init-weights", "resnet18_imagenet.pth",
                     "--out", "nope", *data, cwd=tmp_path)
    assert strict.returncode == 2 and "add model.new_head=true" in strict.stderr, strict.stderr[-800:]
    tuned = run_cli("train", "--model", "torchvision:resnet18", "--init-weights", "resnet18_imagenet.pth",
                    "model.new_head=true", "--out", "teacher", *data, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "model.new_head: fc.weight, fc.bias initialised for 10 classes" in tuned.stderr
    student = run_cli("distill", "--method", "kd", "--teacher", "teacher/best.pt", "--student",
                      "torchvision:mobilenet_v3_small", "model.kwargs={dropout: 0.1}", "--out", "student", *data,
                      cwd=tmp_path)
    assert student.returncode == 0, student.stderr[-2000:]
    ckpt = torch.load(tmp_path / "student" / "best.pt", weights_only=True)
    assert ckpt["meta"]["kwargs"] == {"dropout": 0.1}
    torchvision.models.mobilenet_v3_small(num_classes=10, dropout=0.1).load_state_dict(ckpt["model"])
    wrong = run_cli("distill", "--method", "kd", "--teacher", "teacher/best.pt", "--student",
                    "torchvision:mobilenet_v3_small", "model.kwargs={no_such_option: 1}", "--out", "bad", *data,
                    cwd=tmp_path)
    assert wrong.returncode == 2 and "no_such_option" in wrong.stderr and not (tmp_path / "bad").exists()


EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES)
def test_examples_run(script: str, tmp_path: Path) -> None:
    assert len(EXAMPLES) >= 2
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin",
                                                                               "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student saved" in result.stdout


def test_a_vit_at_another_size_is_one_error_naming_the_option_that_fixes_it(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from lakd.cli import main

    argv = ["train", "--model", "timm:vit_tiny_patch16_224", "--dataset", "synthetic", "data.synthetic_size=48",
            "data.val_size=8", "--epochs", "1", "--batch-size", "8", "--no-progress", "train.threads=1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.kwargs={img_size: 32}" in err and not (tmp_path / "a").exists()
    assert main([*argv, "model.kwargs={img_size: 32}", "--out", str(tmp_path / "b")]) == 0
