"""Weights of other code bases: option-A CIFAR ResNets, safe state_dict readers, key maps, strict loading with
clear errors, a teacher trained with another input normalisation, and akamaster's real released checkpoint."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lakd.cli import main
from lakd.errors import LakdError
from lakd.models import build_model
from lakd.models.base import Renormalise, feed_with_normalisation
from lakd.models.weights import KEY_MAP_PRESETS, load_weights_into, read_state_dict, remap_keys, resolve_key_map

AKAMASTER = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrained" / "cifar10_resnet_akamaster"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _akamaster_style(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our resnet*_a weights renamed the way akamaster's code names them, with DataParallel's prefix."""
    inverse = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"^stages\.0\.", "layer1."),
               (r"^stages\.1\.", "layer2."), (r"^stages\.2\.", "layer3."), (r"^head\.fc\.", "linear.")]
    out = {}
    for key, value in model.state_dict().items():
        for pattern, repl in inverse:
            key = re.sub(pattern, repl, key)
        out[f"module.{key}"] = value.clone()
    return out


def test_option_a_shortcut_is_parameter_free_zero_padding() -> None:
    a, b = build_model("resnet20_a", 10), build_model("resnet20", 10)
    assert sum(p.numel() for p in a.parameters()) == 269_722  # He et al. 2016: 0.27M
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())
    block = a.stages[1][0]
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    assert a.stage_shapes((3, 32, 32)) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


@pytest.mark.parametrize("suffix", [".th", ".pth", ".safetensors"])
def test_foreign_checkpoint_loads_exactly(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = build_model("resnet20_a", 10)
    state = _akamaster_style(source)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # akamaster's layout: {'state_dict': ..., 'best_prec1': ...}
        torch.save({"state_dict": state, "best_prec1": 91.7}, path)
    raw = read_state_dict(path)
    assert all(not k.startswith("module.") for k in raw)
    target = build_model("resnet20_a", 10)
    load_weights_into(target, path, "akamaster")
    for (k, v), (k2, v2) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    # The same rules given as data instead of the preset name.
    again = build_model("resnet20_a", 10)
    load_weights_into(again, path, [list(rule) for rule in KEY_MAP_PRESETS["akamaster"]])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x)[0], source.eval()(x)[0])


def test_weights_that_do_not_fit_are_one_error_listing_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.th"
    torch.save({"state_dict": _akamaster_style(build_model("resnet20_a", 10))}, path)
    with pytest.raises(LakdError, match=r"missing: .*unexpected: .*model.init_key_map=akamaster"):
        load_weights_into(build_model("resnet20_a", 10), path)  # no key map
    with pytest.raises(LakdError, match=r"wrong shape: head\.fc\.weight \(10, 64\) vs \(100, 64\)"):
        load_weights_into(build_model("resnet20_a", 100), path, "akamaster")
    with pytest.raises(LakdError, match="missing: .*in all"):
        load_weights_into(build_model("resnet20", 10), path, "akamaster")  # option B has projection convs
    with pytest.raises(LakdError, match="unknown key map 'akamastr'"):
        resolve_key_map("akamastr")
    with pytest.raises(LakdError, match="bad regex"):
        resolve_key_map([["(", "x"]])
    with pytest.raises(LakdError, match="two weights to 'a'"):
        remap_keys({"a": torch.zeros(1), "b": torch.zeros(1)}, [("^b$", "a")])


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle payload
        return (print, ("PWNED",))


def test_readers_never_run_pickled_code_and_name_the_problem(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {"w": _Payload()}}, f)
    with pytest.raises(LakdError, match="cannot be loaded safely.*never pickled objects"):
        read_state_dict(evil)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(LakdError, match="not a readable safetensors file"):
        read_state_dict(junk)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "arch": "x"}, empty)
    with pytest.raises(LakdError, match="holds no state_dict"):
        read_state_dict(empty)
    with pytest.raises(LakdError, match="does not exist"):
        read_state_dict(tmp_path / "missing.th")
    with pytest.raises(LakdError, match="is a directory"):
        read_state_dict(tmp_path)


def test_renormalise_gives_the_teacher_its_own_normalisation() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    as_data = (pixels - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    as_model = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(Renormalise(CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD)(as_data), as_model)
    model = build_model("resnet8", 10)
    assert not feed_with_normalisation(model, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_MEAN, CIFAR10_STD)
    reference = build_model("resnet8", 10)
    reference.load_state_dict(model.state_dict())
    assert feed_with_normalisation(model, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(as_data)[0], reference(as_model)[0], rtol=1e-4, atol=1e-5)


TINY = ["--dataset", "synthetic", "--epochs", "1", "--no-progress", "--precision", "fp32",
        "data.synthetic_size=96", "data.val_size=16", "data.batch_size=16"]


def test_train_from_foreign_weights_then_distil_with_its_normalisation(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "foreign.th"
    torch.manual_seed(1)
    torch.save({"state_dict": _akamaster_style(build_model("resnet20_a", 10))}, weights)
    teacher_dir = tmp_path / "teacher"
    norm = ["data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]"]
    assert main(["train", "--model", "resnet20_a", "--init-weights", str(weights), "model.init_key_map=akamaster",
                 "--out", str(teacher_dir), *TINY, "optim.lr=1e-9", *norm]) == 0
    ckpt = torch.load(teacher_dir / "last.pt", weights_only=True)
    assert ckpt["meta"]["mean"] == list(IMAGENET_MEAN)
    # lr ~0: the weights are the foreign ones (up to BatchNorm running statistics)
    loaded = build_model("resnet20_a", 10)
    load_weights_into(loaded, weights, "akamaster")
    conv = "stages.1.0.conv1.weight"
    torch.testing.assert_close(ckpt["model"][conv], loaded.state_dict()[conv], rtol=0, atol=1e-6)
    student_dir = tmp_path / "student"
    assert main(["distill", "--method", "kd", "--teacher", str(teacher_dir / "last.pt"), "--student", "resnet8",
                 "--out", str(student_dir), *TINY]) == 0
    meta = torch.load(student_dir / "last.pt", weights_only=True)["meta"]
    assert meta["mean"] != list(IMAGENET_MEAN)  # the student keeps the data's normalisation
    # every parameter as resolved, defaults included (not only the overrides, of which there are none here)
    params = meta["distill"]["params"]
    assert (params["ce_weight"], params["kd_weight"], params["temperature"]) == (0.1, 0.9, 4.0)
    capsys.readouterr()
    for extra, message in (
        (["--init-weights", str(tmp_path / "nope.th")], "does not exist"),
        (["--init-weights", str(weights)], "do not fit the model 'resnet20_a'"),
        (["--init-weights", str(weights), "model.init_key_map=nope"], "unknown key map 'nope'"),
        (["data.mean=[0.5,0.5,0.5]"], "go together"),
        (["data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"], "3 channel means"),
    ):
        out = tmp_path / "never"
        assert main(["train", "--model", "resnet20_a", "--out", str(out), *TINY, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
        assert not out.exists()


def test_per_method_pair_settings_apply_to_their_method_only(tmp_path: Path) -> None:
    from lakd.config import DistillRunConfig, build_config

    pair = tmp_path / "pair.yaml"
    pair.write_text("distill:\n  per_method:\n    dkd: {beta: 2.0}\n    reviewkd: {reviewkd_weight: 0.6}\n")
    dkd = build_config(DistillRunConfig, [str(pair)], ["distill.method=dkd"])
    assert dkd.distill.resolved_params() == {"beta": 2.0}
    kd = build_config(DistillRunConfig, [str(pair)], ["distill.method=kd"])
    assert kd.distill.resolved_params() == {}
    explicit = build_config(DistillRunConfig, [str(pair)], ["distill.method=dkd", "distill.params.beta=5"])
    assert explicit.distill.resolved_params() == {"beta": 5}
    summary = json.dumps(dkd.to_dict())
    assert "per_method" in summary


@pytest.mark.realdata
def test_akamaster_resnet56_loads_and_is_accurate(shared_data: Path) -> None:
    """The real released file: every key fits resnet56_a and the model classifies our CIFAR-10 test images."""
    path = AKAMASTER / "resnet56-4bfd9763.th"
    if not path.is_file():
        pytest.skip("akamaster weights not present")
    from lakd.data import load_splits
    from lakd.data.augment import normalise

    model = build_model("resnet56_a", 10)
    load_weights_into(model, path, "akamaster")
    splits = load_splits("cifar10", shared_data, val_size=0, test_limit=500)
    x = torch.from_numpy(splits.test.x).permute(0, 3, 1, 2)
    x = normalise(x, torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))
    with torch.no_grad():
        pred = model.eval()(x)[0].argmax(1)
    accuracy = float((pred == torch.from_numpy(splits.test.y).long()).float().mean())
    assert accuracy > 0.75  # 83.2 % on the whole JPEG test set


def test_new_head_loads_pretrained_weights_for_another_class_count(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Weights for 100 classes into a 10-class model: with model.new_head every key but the classifier's loads
    (strictly), the classifier keeps its fresh initialisation; without it the error says to ask for it."""
    torch.manual_seed(0)
    pretrained = build_model("resnet8", 100)
    path = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), path)
    model = build_model("resnet8", 10)
    fresh = load_weights_into(model, path, new_head=True, num_classes=10)
    assert fresh == ["head.fc.weight", "head.fc.bias"]
    mine, theirs = model.state_dict(), pretrained.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k not in fresh)
    assert mine["head.fc.weight"].shape == (10, 64)
    with pytest.raises(LakdError, match=r"wrong shape: head\.fc\.weight.*add model\.new_head=true"):
        load_weights_into(build_model("resnet8", 10), path, num_classes=10)
    broken = dict(theirs)
    broken["stem.0.weight"] = broken["stem.0.weight"][:, :2]  # a real mismatch outside the head still fails
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(LakdError, match=r"wrong shape: stem\.0\.weight"):
        load_weights_into(build_model("resnet8", 10), tmp_path / "broken.pt", new_head=True, num_classes=10)
    # the CLI door: fine-tune the 100-class weights on 10 classes, then distil from the fine-tuned teacher
    common = ["--dataset", "synthetic", "data.synthetic_size=64", "data.val_size=16", "--epochs", "1",
              "--batch-size", "16", "--no-progress"]
    assert main(["train", "--model", "resnet8", "--init-weights", str(path), "model.new_head=true",
                 "--out", str(tmp_path / "t"), *common]) == 0
    assert "model.new_head: head.fc.weight, head.fc.bias initialised for 10 classes" in capsys.readouterr().err
    assert main(["distill", "--method", "kd", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8",
                 "--out", str(tmp_path / "s"), *common]) == 0
    assert main(["train", "--model", "resnet8", "model.new_head=true", "--out", str(tmp_path / "x"), *common]) == 2
    assert "give the weights file too" in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "message"), [
    ("{num_classes: 3}", "model.kwargs'.num_classes cannot be set: the data sets it"),
    ("{pretrained: true}", "never from the constructor"),
    ("{checkpoint_path: /etc/passwd}", "never from the constructor"),
    ("{width: {a: 1}}", "is not a plain value"),
    ("{bogus: 1}", r"does not take option\(s\) \['bogus'\]"),
])
def test_model_kwargs_are_checked_at_every_door(kwargs: str, message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--model", "resnet8", "--dataset", "synthetic", "data.synthetic_size=64", "data.val_size=16",
            "--epochs", "1", "--no-progress", f"model.kwargs={kwargs}", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_naming_constructor_options_is_checked_before_building(tmp_path: Path) -> None:
    from lakd.checkpoint import checkpoint_meta

    meta = {"arch": "resnet8", "num_classes": 10, "kwargs": {"checkpoint_path": "/etc/passwd"}}
    with pytest.raises(LakdError, match="meta.kwargs.checkpoint_path cannot be set.*not written by lakd"):
        checkpoint_meta({"model": {}, "meta": meta}, tmp_path / "x.pt")
