"""The frozen teacher's inference forms (lakd.models.frozen): folded BatchNorm and the compiled forward compute
what the teacher as built computes, are refused where they would not, and every method sees the same teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lakd.compiling as compiling
import lakd.models.frozen as frozen
from lakd.compiling import resolve_compile
from lakd.distill import build_distiller
from lakd.errors import LakdError
from lakd.models import build_model
from lakd.models.adapter import HookedModel, StageSpec
from lakd.models.frozen import FrozenForward, all_outputs, fold_batchnorm
from lakd.run import prepare_teacher


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm with the statistics and affine terms of a trained model (folding the defaults is too easy)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def outputs_close(a: frozen.TeacherOutputs, b: frozen.TeacherOutputs, rtol: float) -> bool:
    pairs = [(a.logits, b.logits), *zip(a.posts, b.posts, strict=True), *zip(a.pres, b.pres, strict=True)]
    return all(torch.allclose(p, q, rtol=rtol, atol=rtol * (1 + q.abs().max().item())) for p, q in pairs)


@pytest.mark.parametrize("arch", ["resnet8", "resnet8x4", "vgg8", "wrn_16_1", "mobilenetv2"])
def test_folded_teacher_computes_the_same_and_leaves_the_original(arch: str) -> None:
    teacher = trained_looking(build_model(arch, 10))
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(4, 3, 32, 32)
    folded, count = fold_batchnorm(teacher, x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert 0 < count <= n_bn
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - count
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the original is untouched
    with torch.no_grad():
        assert outputs_close(all_outputs(folded, x), all_outputs(teacher, x), rtol=1e-4)


class ConvFeatureOut(nn.Module):
    """A conv whose raw output is also a stage output: folding its BatchNorm would change that output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 2)
        self.raw = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.raw(h)  # the stage: the conv's output itself
        return self.fc(torch.relu(self.bn(h)).mean((2, 3)))


def test_folding_that_would_change_an_output_is_refused() -> None:
    teacher = HookedModel(trained_looking(ConvFeatureOut()), StageSpec(("raw",)))
    folded, count = fold_batchnorm(teacher, torch.randn(2, 3, 8, 8))
    assert count == 0 and folded is teacher


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3, 2)
        self.stage = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage(self.bn(self.conv(x)) + self.conv(x))  # the conv runs twice: folding would change its 2nd use
        return self.fc(h.mean((2, 3)))


def test_a_conv_used_twice_is_not_folded() -> None:
    teacher = HookedModel(trained_looking(SharedConv()), StageSpec(("stage",)))
    assert frozen._conv_bn_pairs(teacher, torch.randn(2, 3, 8, 8)) == []


def test_compile_is_resolved_from_the_choice_the_device_and_the_run_length(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(compiling, "can_compile", lambda _device: (True, ""))
    assert resolve_compile("auto", cpu, compiling.COMPILE_MIN_STEPS)[0] is True
    assert resolve_compile("auto", cpu, 10) == (False, "a short run (10 steps < 1000) does not repay compilation")
    assert resolve_compile("true", cpu, 10)[0] is True
    assert resolve_compile("false", cpu, 10**6) == (False, "distill.compile = false")
    monkeypatch.setattr(compiling, "can_compile", lambda _device: (False, "no C++ compiler on PATH"))
    assert resolve_compile("true", cpu, 10**6) == (False, "no C++ compiler on PATH")


def test_a_run_folds_the_teacher_it_builds() -> None:
    teacher = trained_looking(build_model("resnet8", 10))
    folded, count = prepare_teacher(teacher, (3, 32, 32))
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) and folded is not teacher
    hooked = HookedModel(trained_looking(ConvFeatureOut()), StageSpec(("raw",)))
    assert prepare_teacher(hooked, (3, 8, 8)) == (hooked, 0)  # nothing that can be folded without a change


def test_config_rejects_an_unknown_compile_choice(tmp_path, capsys) -> None:
    from lakd.cli import main

    rc = main(["distill", "--method", "kd", "--teacher", "resnet8", "--student", "resnet8", "--dataset", "synthetic",
               "distill.compile=fast", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc != 0 and "distill.compile" in err and "auto, true, false" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not compiling.can_compile(torch.device("cpu"))[0], reason="torch.compile cannot run here")
def test_compiled_teacher_matches_eager_and_runs_other_shapes_eagerly() -> None:
    teacher, _ = fold_batchnorm(trained_looking(build_model("resnet8", 10)), torch.randn(4, 3, 32, 32))
    forward = FrozenForward(teacher, compile_it=True)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert outputs_close(forward(x), all_outputs(teacher, x), rtol=1e-4)
        assert forward.active and not forward.note
        short = torch.randn(3, 3, 32, 32)  # another batch size: the eager forward, no recompilation
        assert outputs_close(forward(short), all_outputs(teacher, short), rtol=1e-6)


def test_a_failing_compiler_falls_back_with_a_note(monkeypatch, capsys) -> None:
    def broken(*_a, **_k):
        def run(_x):
            raise RuntimeError("no working compiler\nmore")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    teacher = build_model("resnet8", 10).eval()
    forward = FrozenForward(teacher, compile_it=True)
    x = torch.randn(2, 3, 32, 32)
    out = forward(x)
    assert outputs_close(out, all_outputs(teacher, x), rtol=1e-6)
    assert not forward.active and "no working compiler" in forward.note
    assert "running it eagerly" in capsys.readouterr().err


def test_a_wrong_compiled_program_is_caught(monkeypatch) -> None:
    def wrong(fn, **_k):
        return lambda x: frozen.TeacherOutputs(*(lambda o: (o.logits + 100, o.posts, o.pres))(fn(x)))

    monkeypatch.setattr(torch, "compile", wrong)
    teacher = build_model("resnet8", 10).eval()
    forward = FrozenForward(teacher, compile_it=True)
    x = torch.randn(2, 3, 32, 32)
    assert outputs_close(forward(x), all_outputs(teacher, x), rtol=1e-6)
    assert "disagreed" in forward.note and not forward.active


@pytest.mark.parametrize("method", ["kd", "fitnet", "reviewkd", "lakd", "lakd-local"])
def test_methods_see_the_same_teacher_through_a_whole_forward(method: str) -> None:
    """With an inference forward set, LAKD takes the teacher from one whole forward instead of stage by stage;
    every method's losses are the ones of the teacher as built."""
    params = {"detach": True, "detach_until": 1.0, "backward": "local"} if method == "lakd-local" else {}
    name = "lakd" if method == "lakd-local" else method
    teacher = trained_looking(build_model("resnet14", 10))
    torch.manual_seed(0)
    plain = build_distiller(name, build_model("resnet8", 10), teacher, params).train()
    through = copy.deepcopy(plain)
    through.set_teacher_inference(FrozenForward(through.teacher, compile_it=False))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, want = plain.forward_train(x, y, 0.5)
    _, got = through.forward_train(x, y, 0.5)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(want[key], got[key], rtol=1e-5, atol=1e-6), key


def test_bad_choice_is_a_lakd_error() -> None:
    from lakd.config import DistillRunConfig, validate

    cfg = DistillRunConfig()
    cfg.distill.compile = "turbo"
    with pytest.raises(LakdError, match="distill.compile"):
        validate(cfg)


@pytest.mark.skipif(not compiling.can_compile(torch.device("cpu"))[0], reason="torch.compile cannot run here")
def test_lakd_compiled_losses_give_the_eager_losses_and_gradients() -> None:
    teacher = trained_looking(build_model("resnet14", 10))
    torch.manual_seed(0)
    eager = build_distiller("lakd", build_model("resnet8", 10), teacher).train()
    compiled = copy.deepcopy(eager)
    assert compiled.compile_losses() and not build_distiller("kd", build_model("resnet8", 10), teacher).compile_losses()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    grads = []
    for d in (eager, compiled):
        _, losses = d.forward_train(x, y, 0.5)
        sum(losses.values()).backward()
        grads.append({n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None})
        assert all(torch.isfinite(v) for v in losses.values())
    _, want = eager.forward_train(x, y, 0.5)
    _, got = compiled.forward_train(x, y, 0.5)
    for key in want:
        assert torch.allclose(want[key], got[key], rtol=1e-4, atol=1e-6), key
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-6), name
    for part in (compiled._fused_forward, compiled._fused_backward):  # both ran compiled, none fell back
        assert part.active and part.checked and not part.note
