"""Any nn.Module as teacher or student: the stage spec, hooks, LAKD's local modules on hooked models (same
gradients as on the zoo, isolation by gradients), every method on a hooked pair, token grids, the Python API,
and one clear error for every bad spec. Needs neither torchvision nor timm (see test_torchvision_timm.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lakd
from lakd.distill import build_distiller, list_methods
from lakd.errors import LakdError
from lakd.models import HookedModel, StageSpec, build_model, check_gradient_isolation


def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class PlainCNN(nn.Module):
    """A user's own model: nothing lakd-specific, forward returns the logits."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), classes: int = 10, skip: bool = False) -> None:
        super().__init__()
        self.stem = block(3, widths[0], 1)
        self.layer1 = block(widths[0], widths[0], 1)
        self.layer2 = block(widths[0], widths[1], 2)
        self.layer3 = block(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], classes)
        self.skip = skip  # the stem's output also feeds the head: local modules cannot be independent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        a = self.layer1(s)
        b = self.layer2(a)
        c = self.layer3(b)
        pooled = F.adaptive_avg_pool2d(c, 1).flatten(1)
        if self.skip:
            pooled = pooled + F.adaptive_avg_pool2d(s, 1).flatten(1).repeat(1, c.shape[1] // s.shape[1])
        return self.fc(pooled)


class ZooAsPlain(nn.Module):
    """A zoo model seen as a foreign module: its stages called as modules, forward returns logits only."""

    def __init__(self, zoo: nn.Module) -> None:
        super().__init__()
        self.zoo = zoo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.zoo.stem(x)
        for stage in self.zoo.stages:
            h = stage(h)
        return self.zoo.head(h)


class TinyViT(nn.Module):
    """Patch embedding + class token + MLP blocks: stage outputs are (B, 1 + N, D) tokens."""

    def __init__(self, dim: int = 24, patch: int = 4, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
                                      for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.blocks(tokens)[:, 0])


PLAIN_STAGES = ["layer1", "layer2", "layer3"]
ZOO_STAGES = ["zoo.stages.0", "zoo.stages.1", "zoo.stages.2"]
SHAPE = (3, 16, 16)


def batch(n: int = 6, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


# -- the adapter -------------------------------------------------------------------------------------------
def test_hooked_forward_matches_the_model_and_leaves_it_untouched() -> None:
    torch.manual_seed(0)
    zoo = build_model("resnet8", 10).eval()
    hooked = HookedModel(ZooAsPlain(zoo), ZOO_STAGES).eval()
    x, _ = batch()
    logits, feats = hooked(x)
    ref_logits, ref_feats = zoo(x)
    torch.testing.assert_close(logits, ref_logits)
    for f, r in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(f, r)
    assert hooked.stage_shapes(SHAPE) == zoo.stage_shapes(SHAPE)
    assert hooked.num_classes(SHAPE) == 10
    assert all(not m._forward_hooks for m in zoo.modules())  # hooks live only during our forwards
    copy.deepcopy(hooked)(x)  # a copy works on its own


@pytest.mark.parametrize(("backward", "teacher_inputs_until"), [("local", 0.0), ("joint", 0.0), ("local", 0.6)])
def test_lakd_on_a_hooked_model_has_the_zoo_gradients(backward: str, teacher_inputs_until: float) -> None:
    """The same student and teacher, once as zoo models and once as foreign modules through hooks: LAKD's losses
    and every gradient agree (local modules, per-module backward, NDAM, feature projectors, KD, and, at step
    progress 0.5 < teacher_inputs_until, modules > 0 fed the teacher's features through the hooks)."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    params = {"detach_until": 1.0, "backward": backward, "kd_weight": 0.5, "feat_projector": "always",
              "teacher_inputs_until": teacher_inputs_until}
    torch.manual_seed(1)
    zoo = build_distiller("lakd-study", student, teacher, params, input_shape=SHAPE, total_epochs=2)
    torch.manual_seed(1)
    hooked = build_distiller("lakd-study", HookedModel(ZooAsPlain(copy.deepcopy(student)), ZOO_STAGES),
                             HookedModel(ZooAsPlain(copy.deepcopy(teacher)), ZOO_STAGES), params,
                             input_shape=SHAPE, total_epochs=2)
    x, y = batch()
    results = []
    for d in (zoo, hooked):
        d.train()
        _, losses = d.train_step(x, y, 0.5, backward=lambda loss: loss.backward())
        named = {n.replace("student_model.model.zoo.", "student_model."): g for n, g in grads(d).items()}
        results.append((losses, named))
    (zoo_losses, zoo_grads), (hooked_losses, hooked_grads) = results
    assert list(zoo_losses) == list(hooked_losses)
    for name in zoo_losses:
        torch.testing.assert_close(zoo_losses[name], hooked_losses[name])
    assert set(zoo_grads) == set(hooked_grads) and len(zoo_grads) > 20
    for name, g in zoo_grads.items():
        torch.testing.assert_close(g, hooked_grads[name], rtol=1e-4, atol=1e-6)


def test_local_modules_of_a_hooked_model_are_isolated_by_gradients() -> None:
    torch.manual_seed(0)
    d = lakd.distiller("lakd", PlainCNN(), PlainCNN((16, 24, 48)), student_stages=PLAIN_STAGES,
                       teacher_stages=PLAIN_STAGES, input_shape=SHAPE, epochs=1, detach_until=1.0, kd_weight=1.0)
    x, y = batch()
    _, losses = d.forward_train(x, y, 0.9)
    owners = {0: ("stem.", "layer1."), 1: ("layer2.",), 2: ("layer3.", "fc.")}
    for name, loss in losses.items():
        d.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        touched = {n.removeprefix("student_model.model.") for n, g in grads(d).items()
                   if n.startswith("student_model.") and g.abs().sum() > 0}
        k = int(name[-1]) if name[-1].isdigit() else 2  # ce / kd belong to the last module
        assert touched, name
        assert all(t.startswith(owners[k]) for t in touched), (name, sorted(touched))


@pytest.mark.parametrize("layout", ["nhwc", "tokens"])
@pytest.mark.filterwarnings("ignore:lakd. teacher_inputs_until")  # the learned-adapter warning: this test wants them
def test_teacher_fed_inputs_on_a_hooked_student_keep_its_layout_and_isolation(layout: str) -> None:
    """A teacher feature replaces a hooked student's stage output in the stage's own layout (channels-last, or
    patch tokens after the student's own class token); module 1's losses then reach neither module 0 nor the
    teacher, and module 1 trains."""
    torch.manual_seed(0)
    if layout == "tokens":
        student: nn.Module = TinyViT(dim=16, depth=3)
        spec = StageSpec(("blocks.0", "blocks.1", "blocks.2"), layout="tokens", prefix_tokens=1, patch_size=4)
        owner0, owner1 = ("patch.", "cls", "blocks.0."), ("blocks.1.",)
    else:
        student = ChannelsLast(PlainCNN())
        spec = StageSpec(("cnn.nhwc1", "cnn.nhwc2", "cnn.nhwc3"), layout="nhwc")
        owner0, owner1 = ("cnn.stem.", "cnn.layer1."), ("cnn.layer2.",)
    d = lakd.distiller("lakd", student, PlainCNN(), student_stages=spec, teacher_stages=PLAIN_STAGES,
                       input_shape=SHAPE, epochs=1, detach_until=1.0, teacher_inputs_until=0.5)
    x, y = batch()
    own_inputs = copy.deepcopy(d)
    own_inputs.params.teacher_inputs_until = 0.0  # the same modules on the student's own chain
    _, own = own_inputs.forward_train(x, y, 0.2)
    _, losses = d.forward_train(x, y, 0.2)
    torch.testing.assert_close(losses["feat0"], own["feat0"])  # module 0 runs on the image either way
    assert not torch.allclose(losses["feat1"], own["feat1"])  # module 1 ran on the teacher's feature
    d.zero_grad(set_to_none=True)
    (losses["feat1"] + losses["ndam1"]).backward()
    touched = {n.removeprefix("student_model.model.") for n, g in grads(d).items()
               if n.startswith("student_model.") and g.abs().sum() > 0}
    assert touched and all(t.startswith(owner1) for t in touched), sorted(touched)
    assert not any(t.startswith(owner0) for t in touched)
    assert torch.isfinite(d.step(x, y, 0.2)) and torch.isfinite(d.step(x, y, 0.8))


class ChannelsLast(nn.Module):
    """PlainCNN whose stages hand on channels-last (B, H, W, C) outputs, as Swin's do."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn
        for i in (1, 2, 3):
            setattr(cnn, f"nhwc{i}", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cnn
        h = c.stem(x)
        for i in (1, 2, 3):
            h = getattr(c, f"nhwc{i}")(getattr(c, f"layer{i}")(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return c.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_every_method_trains_a_hooked_pair() -> None:
    x, y = batch(8)
    for method in list_methods():
        torch.manual_seed(0)
        student = PlainCNN()
        d = lakd.distiller(method, student, PlainCNN((16, 24, 48)), student_stages=PLAIN_STAGES,
                           teacher_stages=PLAIN_STAGES, input_shape=SHAPE, epochs=1, train_labels=torch.arange(64) % 10)
        extra = {"index": torch.arange(8)} if d.needs_index else {}
        d.train()
        d.zero_grad(set_to_none=True)
        loss = d.step(x, y, 0.5, **extra)
        assert torch.isfinite(loss), method
        assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0, method
        assert d.student() is student  # export gets the user's own module


def test_a_vit_teaches_a_cnn_through_token_grids() -> None:
    torch.manual_seed(0)
    vit = TinyViT()
    spec = StageSpec(("blocks.0", "blocks.1", "blocks.2", "blocks.3"), layout="tokens", prefix_tokens=1, patch_size=4)
    hooked = HookedModel(vit, spec)
    x, y = batch()
    _, feats = hooked(x)
    assert [tuple(f.shape) for f in feats] == [(6, 24, 4, 4)] * 4
    tokens = vit.blocks[:1](torch.cat([vit.cls.expand(6, -1, -1), vit.patch(x).flatten(2).transpose(1, 2)], 1))
    torch.testing.assert_close(feats[0][:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # row 1, column 2 of the grid
    for method in ("lakd", "fitnet", "at", "kd"):
        d = lakd.distiller(method, PlainCNN(), vit, student_stages=PLAIN_STAGES, teacher_stages=spec,
                           input_shape=SHAPE)
        assert torch.isfinite(d.step(x, y, 0.5)), method


# -- the Python API ------------------------------------------------------------------------------------------
def test_api_step_trains_and_forward_returns_graphs() -> None:
    torch.manual_seed(0)
    student = PlainCNN()
    d = lakd.distiller("lakd", student, PlainCNN((16, 24, 48)), student_stages=PLAIN_STAGES,
                       teacher_stages=PLAIN_STAGES, input_shape=SHAPE, epochs=3, detach_until=1.0)
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.05, momentum=0.9)
    x, y = batch(16)
    before = student.fc.weight.detach().clone()

    def full_loss() -> float:  # every term at full weight (progress 1), without touching the gradients
        with torch.no_grad():
            return float(sum(d(x, y, 1.0)[1].values()))

    first = full_loss()
    for i in range(12):
        opt.zero_grad()
        loss = d.step(x, y, i / 12)
        opt.step()
        assert torch.isfinite(loss) and not loss.requires_grad
    assert not torch.equal(before, student.fc.weight) and full_loss() < first
    logits, losses = d(x, y, 0.5)
    assert logits.shape == (16, 10) and all(v.requires_grad for v in losses.values())
    with pytest.raises(LakdError, match="progress"):
        d.step(x, y, 1.5)
    with pytest.raises(LakdError, match="feat_wieght|unknown"):
        lakd.distiller("lakd", PlainCNN(), PlainCNN(), student_stages=PLAIN_STAGES, teacher_stages=PLAIN_STAGES,
                       input_shape=SHAPE, feat_wieght=1.0)
    with pytest.raises(LakdError, match="student_stages"):
        lakd.distiller("kd", PlainCNN(), PlainCNN(), input_shape=SHAPE)


# -- bad specs: one clear error each -------------------------------------------------------------------------
def test_bad_stage_specs_get_clear_errors() -> None:
    x, _ = batch()
    with pytest.raises(LakdError, match=r"no module 'layer4'.*did you mean 'layer3'"):
        HookedModel(PlainCNN(), ["layer1", "layer4"])
    with pytest.raises(LakdError, match="do not follow each other"):
        HookedModel(PlainCNN(), ["layer2", "layer1"])(x)
    with pytest.raises(LakdError, match="appears twice"):
        StageSpec(("layer1", "layer1"))
    with pytest.raises(LakdError, match="never ran"):
        _never_ran()
    with pytest.raises(LakdError, match="not logits"):
        HookedModel(nn.Sequential(PlainCNN(), nn.Unflatten(1, (2, 5))), ["0.layer1"])(x)
    with pytest.raises(LakdError, match="patch tokens"):
        HookedModel(TinyViT(), StageSpec(("blocks.0",), layout="tokens", prefix_tokens=0, patch_size=4))(x)
    with pytest.raises(LakdError, match="inside an earlier module"):
        lakd.distiller("lakd", PlainCNN(skip=True), PlainCNN(), student_stages=PLAIN_STAGES,
                       teacher_stages=PLAIN_STAGES, input_shape=SHAPE, detach_until=1.0)
    check_gradient_isolation(HookedModel(PlainCNN(), PLAIN_STAGES), SHAPE)  # no skip: fine
    with pytest.raises(LakdError, match="teacher_tail.*zoo teacher"):
        lakd.distiller("lakd-study", PlainCNN(), PlainCNN(), student_stages=PLAIN_STAGES,
                       teacher_stages=PLAIN_STAGES, input_shape=SHAPE, aux_weight=0.5, aux_head="teacher_tail")
    with pytest.raises(LakdError, match="split = 'block'.*zoo student"):
        lakd.distiller("lakd-study", PlainCNN(), PlainCNN(), student_stages=PLAIN_STAGES, teacher_stages=PLAIN_STAGES,
                       input_shape=SHAPE, split="block")


def _never_ran() -> None:
    """A stage the forward never calls: the model has a branch that this input does not take."""

    class Branchy(PlainCNN):
        def __init__(self) -> None:
            super().__init__()
            self.unused = block(8, 8, 1)

    HookedModel(Branchy(), ["layer1", "unused"])(batch()[0])
