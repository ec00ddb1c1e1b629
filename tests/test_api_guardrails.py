"""The Python API's guardrails (issues 33 and 34): mistakes in a hand-written loop get lakd's messages, not raw
torch errors or silence."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import lakd
from lakd.models import build_model

SHAPE = (3, 32, 32)


class Small(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.a(x)).mean((2, 3)))


@dataclass
class Output:  # a Hugging Face style output object
    logits: torch.Tensor
    hidden: torch.Tensor


class ReturnsObject(Small):
    def forward(self, x: torch.Tensor) -> Output:  # type: ignore[override]
        h = self.b(self.a(x))
        return Output(self.fc(h.mean((2, 3))), h)


class ReturnsDict(Small):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x)}


@pytest.mark.parametrize("method", ["kd", "lakd", "dkd"])
def test_class_counts_are_checked_at_construction_for_every_method(method: str) -> None:
    with pytest.raises(lakd.LakdError, match="the student predicts 10 classes but the teacher 100"):
        lakd.distiller(method, build_model("resnet8", 10), build_model("resnet14", 100), input_shape=SHAPE)


def test_the_same_module_twice_and_absurd_input_shapes_are_refused() -> None:
    model = build_model("resnet8", 10)
    with pytest.raises(lakd.LakdError, match="the student and the teacher are the same module"):
        lakd.distiller("kd", model, model, input_shape=SHAPE)
    for shape in ((3, 32), (3, 0, 32), (3, 10**6, 32), (3.0, 32, 32)):
        with pytest.raises(lakd.LakdError, match="input_shape must be one image's"):
            lakd.distiller("kd", build_model("resnet8", 10), build_model("resnet14", 10), input_shape=shape)


@pytest.mark.parametrize(("cls", "logits"), [(ReturnsObject, "logits"), (ReturnsDict, "logits")])
def test_a_forward_returning_an_object_names_its_logits(cls: type, logits: str) -> None:
    spec = ["a", "b"]
    with pytest.raises(lakd.LakdError, match="StageSpec\\(stages, logits='logits'\\)"):
        lakd.distiller("kd", cls(), Small(), student_stages=spec, teacher_stages=spec, input_shape=SHAPE)
    d = lakd.distiller("lakd", cls(), Small(), student_stages=lakd.StageSpec(spec, logits=logits),
                       teacher_stages=spec, input_shape=SHAPE)
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    d.train()
    loss = d.step(x, y, progress=0.5)
    assert torch.isfinite(loss)
    with pytest.raises(lakd.LakdError, match="has no 'scores'"):
        lakd.distiller("kd", cls(), Small(), student_stages=lakd.StageSpec(spec, logits="scores"),
                       teacher_stages=spec, input_shape=SHAPE)


def test_a_loop_that_forgets_train_mode_or_the_projectors_is_warned_once() -> None:
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    d = lakd.distiller("fitnet", student, teacher, input_shape=SHAPE)  # FitNet has a learnable projector
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    with pytest.warns(UserWarning, match="the student is in eval mode"):
        d.eval()
        d.step(x, y, progress=0.1)
    d.train()
    wrong = torch.optim.SGD(student.parameters(), lr=0.01)  # misses the projector
    with pytest.warns(UserWarning, match="learnable_parameters\\(\\), not student.parameters\\(\\)"):
        for _ in range(3):
            wrong.zero_grad()
            d.step(x, y, progress=0.2)
            wrong.step()
    right = lakd.distiller("fitnet", copy.deepcopy(student), teacher, input_shape=SHAPE)
    right.train()
    optimizer = torch.optim.SGD(right.learnable_parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about a correct loop
        for _ in range(3):
            optimizer.zero_grad()
            right.step(x, y, progress=0.2)
            optimizer.step()


def test_step_checks_its_batch_against_the_pair() -> None:
    d = lakd.distiller("kd", build_model("resnet8", 10), build_model("resnet14", 10), input_shape=SHAPE)
    d.train()
    x = torch.randn(4, *SHAPE)
    for images, labels, message in (
        (x, torch.tensor([0, 1, 2, 10]), "labels run from 0 to 10, but the models predict 10 classes"),
        (x, torch.tensor([0.0, 1.0, 2.0, 3.0]), "labels must be an integer tensor of 4 class indices"),
        (x, torch.tensor([0, 1]), "labels must be an integer tensor of 4 class indices"),
        (torch.randn(4, 1, 32, 32), torch.arange(4), "images have 1 channels, the models take 3"),
        (torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4), "images must be a float tensor"),
    ):
        with pytest.raises(lakd.LakdError, match=message):
            d.step(images, labels, progress=0.1)
    assert torch.isfinite(d.step(x, torch.arange(4), progress=0.1))
