"""``lakd.fit``: lakd's trainer on the user's own ``Dataset`` objects and modules (issue 32, item 1)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lakd
from lakd.checkpoint import load_checkpoint
from lakd.data import Batching
from lakd.data.objects import DatasetLoader, splits_from_datasets

FAST = {"batch_size": 16, "lr": 0.05, "precision": "fp32", "progress": False, "log": lambda _m: None}


class Shapes(torch.utils.data.Dataset):
    """Four classes told apart by brightness; PIL images (or float tensors), a random flip and noise drawn from
    torch and NumPy's global generators, as a user's transforms would."""

    def __init__(self, n: int, seed: int, side: int = 12, floats: bool = False, stop_at: int | None = None) -> None:
        g = np.random.default_rng(seed)
        self.targets = g.integers(0, 4, n).tolist()
        base = g.random((n, side, side, 3)) * 60
        self.x = (base + np.array(self.targets)[:, None, None, None] * 45).astype(np.uint8)
        self.classes = ["a", "b", "c", "d"]
        self.floats, self.fetched, self.stop_at = floats, 0, stop_at

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[object, int]:
        self.fetched += 1
        if self.stop_at is not None and self.fetched == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # as a user's Ctrl-C / a scheduler would, mid-epoch
        image = self.x[i]
        if torch.rand(()) < 0.5:
            image = image[:, ::-1]
        image = np.clip(image.astype(np.int16) + np.random.randint(-3, 4, image.shape), 0, 255).astype(np.uint8)
        if self.floats:
            return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, self.targets[i]
        return Image.fromarray(image), self.targets[i]


class Net(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b2(self.b1(x)).mean((2, 3)))


def test_supervised_fit_on_a_user_dataset_writes_a_normal_run_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    summary = lakd.fit(model, train=Shapes(160, 0), test=Shapes(48, 1), epochs=2, out=tmp_path / "run", **FAST)
    assert isinstance(summary, lakd.FitSummary) and summary.epochs == 2 and summary.out == tmp_path / "run"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["model"]["name"] == "python:Net" and run["config"]["data"]["dataset"] == "python:Shapes"
    assert run["config"]["data"]["augment"] is False and run["augmentation"] is None  # the user's transforms do
    assert run["data"] == {"train": 144, "val": 16, "test": 48}  # a tenth held out for selection
    assert summary.best_test_top1 is not None and summary.best_test_top1 > 50  # it learned (chance: 25 %)
    # the best weights load into the user's own module; evaluate() scores them as the trainer did
    best = summary.load_best(Net())
    meta = load_checkpoint(summary.best_checkpoint)["meta"]
    again = lakd.evaluate(best, Shapes(48, 1), mean=meta["mean"], std=meta["std"], precision="fp32")
    assert again["top1"] == pytest.approx(summary.best_test_top1)
    from lakd.checkpoint import model_from_checkpoint
    from lakd.run import evaluate_checkpoint

    with pytest.raises(lakd.LakdError, match="trained on a Python dataset object"):  # lakd eval cannot rebuild it
        evaluate_checkpoint(str(summary.best_checkpoint))
    ckpt = load_checkpoint(summary.best_checkpoint)
    with pytest.raises(lakd.LakdError, match=r"model built in Python \(Net\)"):  # nor export / explain its model
        model_from_checkpoint(ckpt, ckpt["meta"], "checkpoint")


def test_distil_user_modules_and_resume_mid_epoch_to_the_same_weights(tmp_path: Path) -> None:
    """A run stopped by SIGTERM inside an epoch and resumed ends with the weights of an uninterrupted one: the
    user's random transforms give the same images on replay (each sample seeded by seed, epoch, index)."""
    torch.manual_seed(0)
    teacher = Net(16)
    stages = {"student_stages": ["b1", "b2"], "teacher_stages": ["b1", "b2"]}

    def run(out: Path, data: Shapes, **extra: object) -> lakd.FitSummary:
        torch.manual_seed(1)
        return lakd.fit(Net(), teacher, train=data, val=Shapes(32, 2), method="lakd", epochs=2, out=out,
                        **stages, **FAST, **extra)

    whole = run(tmp_path / "whole", Shapes(96, 0))
    with pytest.raises(lakd.TrainingStopped):
        # fetches: 1 (the first image's shape) + 96 (the normalisation statistics) + 96 (epoch 1) + 40 of epoch 2
        run(tmp_path / "cut", Shapes(96, 0, stop_at=1 + 96 + 96 + 40))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["partial"]["epoch"] == 1
    with pytest.raises(lakd.LakdError, match="already exists"):  # never overwritten without force
        run(tmp_path / "cut", Shapes(96, 0))
    resumed = run(tmp_path / "cut", Shapes(96, 0), resume=True)
    assert resumed.epochs == whole.epochs == 2
    a, b = (load_checkpoint(s.last_checkpoint)["model"] for s in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    params = json.loads((tmp_path / "whole" / "run.json").read_text())["distill"]["params"]
    assert params == json.loads((tmp_path / "cut" / "run.json").read_text())["distill"]["params"]


def test_workers_do_not_change_the_images(tmp_path: Path) -> None:
    splits = splits_from_datasets(Shapes(40, 0), val_size=0)
    batches = []
    for workers in (0, 2):
        batching = Batching(8, splits.mean, splits.std, shuffle=True, seed=3, workers=workers)
        loader = DatasetLoader(splits.train, batching)
        loader.set_epoch(1)
        batches.append(list(loader))
    assert len(batches[0]) == 5
    for (x0, y0), (x1, y1) in zip(*batches, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_float_images_pass_as_given_and_refuse_mean_std(tmp_path: Path) -> None:
    splits = splits_from_datasets(Shapes(20, 0, floats=True), val_size=0)
    assert splits.mean == (0.0, 0.0, 0.0) and splits.std == (1.0, 1.0, 1.0)
    x, _ = next(iter(DatasetLoader(splits.train, Batching(4, splits.mean, splits.std))))
    assert 0 <= float(x.min()) and float(x.max()) <= 1  # not normalised again
    with pytest.raises(lakd.LakdError, match="normalise them in your transform"):
        lakd.fit(Net(), train=Shapes(20, 0, floats=True), mean=[0.5] * 3, std=[0.2] * 3, out=tmp_path / "f", **FAST)
    assert not (tmp_path / "f").exists()


class _Gray(Shapes):
    def __getitem__(self, i: int) -> tuple[object, int]:
        return torch.rand(1, 12, 12), self.targets[i]


class _Sizes(Shapes):
    def __getitem__(self, i: int) -> tuple[object, int]:
        return torch.rand(3, 12 if i < 5 else 14, 12), self.targets[i]


class _NoTargets(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[object, object]:
        return torch.rand(3, 12, 12), "cat"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train": _Gray(20, 0)}, "3-channel images"),
    ({"train": _NoTargets()}, "a label must be a class index"),
    ({"train": Shapes(20, 0), "val": Shapes(10, 1), "val_size": 4}, "either val"),
    ({"train": Shapes(20, 0), "settings": {"data.path": "/etc"}}, "data.path describe"),
    ({"train": Shapes(20, 0), "val": "cifar10"}, "not a map-style dataset"),
    ({"train": "cifar10", "val": Shapes(10, 1)}, "leave out val and test"),
    ({"train": Shapes(20, 0), "params": {"ndam_weight": 1.0}}, "params are a distillation method's"),
    ({"train": Shapes(20, 0), "settings": {"optim.lr": float("nan")}}, "optim.lr"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(kwargs: dict, message: str, tmp_path: Path) -> None:
    fast = {k: v for k, v in FAST.items() if k not in kwargs.get("settings", {})}
    with pytest.raises(lakd.LakdError, match=message):
        lakd.fit(Net(), **kwargs, out=tmp_path / "run", epochs=1, **fast)
    assert not (tmp_path / "run").exists()


def test_mismatched_models_and_images_are_refused_before_the_folder_is_written(tmp_path: Path) -> None:
    with pytest.raises(lakd.LakdError, match="predicts 10 classes but the data has 4"):
        lakd.fit(Net(classes=10), train=Shapes(20, 0), out=tmp_path / "a", **FAST)
    # an odd image deep in the dataset is found when it is fetched (a dataset is read lazily): one clear error
    with pytest.raises(lakd.LakdError, match=r"item \d+ is a Tensor of shape .3, 14, 12.*same kind and size"):
        lakd.fit(Net(), train=_Sizes(20, 0), out=tmp_path / "b", epochs=1, **FAST)
    with pytest.raises(lakd.LakdError, match=r"teacher model 'Net' predicts 10 classes"):
        lakd.fit(Net(), Net(classes=10), train=Shapes(20, 0), student_stages=["b1", "b2"],
                 teacher_stages=["b1", "b2"], out=tmp_path / "c", **FAST)
    with pytest.raises(lakd.LakdError, match="cannot guess its stages"):
        lakd.fit(Net(), Net(), train=Shapes(20, 0), out=tmp_path / "d", **FAST)
    assert not any((tmp_path / n).exists() for n in "acd")


def test_a_student_at_chance_is_warned_about_and_bn_recalibration_fixes_stale_statistics(tmp_path: Path) -> None:
    """BatchNorm with a very slow momentum keeps its initial running statistics through a short run: the model
    learns (train accuracy) but evaluates at chance. The first epoch says so and names train.bn_recalibrate;
    with it the same run evaluates as it trains."""

    def slow_bn_net() -> Net:
        torch.manual_seed(0)
        net = Net()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1e-4
        return net

    def brighter(n: int, seed: int) -> Shapes:
        data = Shapes(n, seed)
        data.x = np.clip(data.x.astype(int) + 60, 0, 255).astype(np.uint8)  # far from BatchNorm's initial mean
        return data

    logged: list[str] = []
    common = {**FAST, "log": logged.append, "epochs": 2, "val": brighter(48, 2), "mean": [0.0] * 3,
              "std": [0.02] * 3}
    stale = lakd.fit(slow_bn_net(), train=brighter(160, 0), out=tmp_path / "stale", **common)
    warning = [m for m in logged if m.startswith("warning: after epoch 1 the student is at chance")]
    assert len(warning) == 1 and "train.bn_recalibrate" in warning[0], logged
    logged.clear()
    fixed = lakd.fit(slow_bn_net(), train=brighter(160, 0), out=tmp_path / "fixed",
                     settings={"train.bn_recalibrate": 5}, **common)
    assert not any(m.startswith("warning:") for m in logged)
    assert fixed.best_val_top1 > stale.best_val_top1 + 30
    rows = [json.loads(line) for line in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    assert all("train_top1" in r and "val_pred_top_share" in r for r in rows)


def test_a_run_says_how_long_it_will_take_early_and_how_long_is_left(tmp_path: Path) -> None:
    logged: list[str] = []
    lakd.fit(Net(), train=Shapes(240, 0), test=Shapes(16, 1), epochs=2, out=tmp_path / "run",
             **{**FAST, "log": logged.append})
    estimates = [m for m in logged if m.startswith("estimate: ")]
    assert len(estimates) == 1 and "of training left (2 epochs x 13 steps" in estimates[0], logged
    rows = [m for m in logged if m.startswith("epoch ")]
    assert "left" in rows[0] and "left" not in rows[1]  # the last epoch has nothing left
