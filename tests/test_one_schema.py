"""One schema per input kind, whichever door a value comes through (issue 33, item 2).

Each test enumerates the doors of one kind of input and sends the same bad value through every one: each door
must refuse it with the same schema's message, so no reader can skip the check. Kinds: checkpoint metadata (eval,
export, explain as teacher and as student, distill's teacher, an export's own metadata), config values (a flag,
an override, a config file, ``lakd.fit``'s settings, a checkpoint's recorded data settings as eval and explain
read them), method parameters
(the CLI, a config file's per-method entry, ``lakd.fit``, ``lakd.distiller``) and model constructor options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lakd
from lakd.cli import main
from lakd.errors import LakdError
from lakd.models import build_model

TINY = ["--dataset", "synthetic", "data.synthetic_size=48", "data.val_size=8", "--epochs", "1", "--batch-size", "8",
        "--no-progress"]


def _checkpoint(path: Path, **meta_changes: object) -> Path:
    model = build_model("resnet8", 10)
    meta = {"arch": "resnet8", "num_classes": 10, "dataset": "synthetic", "image_size": 32,
            "mean": [0.5] * 3, "std": [0.25] * 3, "data": {"dataset": "synthetic", "synthetic_size": 48},
            **meta_changes}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"image_size": 10**9}, "meta.image_size = 1000000000 is not an image side"),
    ({"num_classes": True}, "meta.num_classes = True is not a class count"),
    ({"std": [0.2, 0.0, 0.2]}, "meta.std = .* is not three positive channel values"),
    ({"kwargs": {"checkpoint_path": "/etc/passwd"}}, "meta.kwargs.checkpoint_path cannot be set"),
])
def test_checkpoint_metadata_is_checked_by_every_reader(change: dict, message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import re

    bad = _checkpoint(tmp_path / "bad.pt", **change)
    good = _checkpoint(tmp_path / "good.pt")
    doors = {
        "eval": ["eval", "--ckpt", str(bad)],
        "export": ["export", "--ckpt", str(bad), "--out", str(tmp_path / "x.safetensors")],
        "explain (teacher)": ["explain", "--teacher", str(bad), "--student", str(good), "--out",
                              str(tmp_path / "e.png")],
        "explain (student)": ["explain", "--teacher", str(good), "--student", str(bad), "--out",
                              str(tmp_path / "e.png")],
        "distill --teacher": ["distill", "--method", "kd", "--teacher", str(bad), "--student", "resnet8",
                              "--out", str(tmp_path / "d"), *TINY],
    }
    for door, argv in doors.items():
        assert main(argv) == 2, door
        err = capsys.readouterr().err
        assert re.search(message, err), (door, err)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "d").exists()
    assert not (tmp_path / "e.png").exists()


def test_an_exports_own_metadata_goes_through_the_same_check(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    from lakd.export import load_exported

    good = _checkpoint(tmp_path / "good.pt")
    assert main(["export", "--ckpt", str(good), "--out", str(tmp_path / "m.safetensors")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        metadata = dict(f.metadata())
    assert metadata["image_size"] == "32"  # every value a JSON string
    for key, value in (("image_size", "1000000000"), ("kwargs", '{"checkpoint_path": "/etc/passwd"}')):
        save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "bad.safetensors"),
                  metadata={**metadata, key: value})
        with pytest.raises(LakdError, match=f"meta.{key}"):
            load_exported(tmp_path / "bad.safetensors")
    model, meta = load_exported(tmp_path / "m.safetensors")
    assert meta["arch"] == "resnet8" and model(torch.zeros(1, 3, 32, 32))[0].shape == (1, 10)


def test_a_config_value_is_checked_the_same_way_through_every_door(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    message = "config key 'optim.lr' = 1000000000.0 is out of range"
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1.0e9\n")
    doors = {
        "flag": ["train", "--model", "resnet8", "--lr", "1e9"],
        "override": ["train", "--model", "resnet8", "optim.lr=1e9"],
        "config file": ["train", "--model", "resnet8", "-c", str(tmp_path / "c.yaml")],
    }
    for door, argv in doors.items():
        assert main([*argv, *TINY, "--out", str(tmp_path / door)]) == 2, door
        assert message in capsys.readouterr().err, door
        assert not (tmp_path / door).exists()
    with pytest.raises(LakdError, match=message):
        lakd.fit("resnet8", train="synthetic", out=tmp_path / "fit", settings={"optim.lr": 1e9})
    # a checkpoint's recorded data settings (lakd eval rebuilds the data from them) go through the same schema
    bad = _checkpoint(tmp_path / "meta.pt", data={"dataset": "synthetic", "synthetic_size": 10**9})
    for argv in (["eval", "--ckpt", str(bad)], ["explain", "--teacher", str(bad), "--student", str(bad),
                                                "--out", str(tmp_path / "e.png")]):
        assert main(argv) == 2, argv
        assert "config key 'data.synthetic_size' = 1000000000 is out of range" in capsys.readouterr().err, argv


def test_a_method_parameter_is_checked_the_same_way_through_every_door(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    message = "temperature"
    teacher = tmp_path / "t.pt"
    _checkpoint(teacher)
    (tmp_path / "pair.yaml").write_text("distill:\n  per_method:\n    kd:\n      temperature: -1\n")
    doors = {
        "override": ["distill.params.temperature=-1"],
        "config file": ["-c", str(tmp_path / "pair.yaml")],
    }
    for door, extra in doors.items():
        argv = ["distill", "--method", "kd", "--teacher", str(teacher), "--student", "resnet8", *TINY,
                "--out", str(tmp_path / door), *extra]
        assert main(argv) == 2, door
        err = capsys.readouterr().err
        assert message in err and "kd" in err, (door, err)
        assert not (tmp_path / door).exists()
    with pytest.raises(LakdError, match=message):
        lakd.fit("resnet8", str(teacher), method="kd", train="synthetic", out=tmp_path / "fit",
                 params={"temperature": -1}, settings={"data.synthetic_size": 48, "data.val_size": 8})
    with pytest.raises(LakdError, match=message):
        lakd.distiller("kd", build_model("resnet8", 10), build_model("resnet14", 10), input_shape=(3, 32, 32),
                       temperature=-1)
    assert not (tmp_path / "fit").exists()


def test_model_options_are_checked_the_same_way_in_a_config_and_in_a_checkpoint(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    assert main(["train", "--model", "resnet8", *TINY, "model.kwargs={pretrained: true}",
                 "--out", str(tmp_path / "r")]) == 2
    assert "kwargs'.pretrained cannot be set" in capsys.readouterr().err
    bad = _checkpoint(tmp_path / "bad.pt", kwargs={"pretrained": True})
    assert main(["eval", "--ckpt", str(bad)]) == 2
    assert "meta.kwargs.pretrained cannot be set" in capsys.readouterr().err
