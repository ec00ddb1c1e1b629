"""The `lakd` command line as a user runs it: help, train/eval round trip, and bad input -> exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lakd.cli import main
from lakd.data import make_synthetic
from tests.test_data import write_jpeg_npz
from tests.test_data_sources import _archive

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--epochs", "1", "--no-progress", "--precision", "fp32",
        "data.synthetic_size=96", "data.val_size=16", "data.batch_size=16"]


def test_help_lists_commands_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["--help"], ["train", "--help"], ["eval", "--help"], ["data", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(cmd)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "lakd train -c configs/cifar10_teacher.yaml" in out


def test_train_then_eval_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and "environment" in summary and summary["config"]["model"]["name"] == "resnet8"
    # what train.malloc did is on record (here: glibc's thresholds set, or why not)
    assert json.loads((out / "run.json").read_text())["environment"]["malloc"].startswith(("glibc", "system ("))
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "best.pt"), "--json", "--precision", "fp32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "resnet8" and result["images"] == 24 and 0 <= result["top1"] <= 100
    assert result["top1"] == pytest.approx(summary["last_test_top1"])


def test_existing_run_dir_needs_resume_or_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    # --resume of a finished run trains nothing more; --epochs 2 continues it by one epoch.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--model", "resnet8", "--out", str(out), "--force", *TINY]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet57"], "did you mean 'resnet56'"),
        (["train", "--model", "resnet8", "--lr", "-0.1"], "optim.lr"),
        (["train", "--model", "resnet8", "optim.momentun=0.9"], "did you mean 'momentum'"),
        (["train", "--model", "resnet8", "-c", "missing.yaml"], "does not exist"),
        (["train", "--model", "resnet8", "--dataset", "cifar10", "--data-root", "/nonexistent/data"],
         "lakd data download cifar10"),
        (["eval", "--ckpt", "missing.pt"], "does not exist"),
    ],
)
def test_bad_input_one_clear_error_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    if args[0] == "train":
        args = [*args, "--out", str(out), "--epochs", "1", "--no-progress"]
    os.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lakd: error:") and message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_eval_refuses_checkpoint_for_other_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY, "data.synthetic_classes=5"]) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "last.pt"), "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    data = make_synthetic(40, 10, seed=0)
    for split in ("train", "test"):
        write_jpeg_npz(tmp_path / "cifar10" / f"{split}.npz", data.x, data.y, [f"c{i}" for i in range(10)])
    assert main(["eval", "--ckpt", str(out / "last.pt"), "--dataset", "cifar10", "--data-root", str(tmp_path)]) == 2
    assert "predicts 5 classes but dataset 'cifar10' has 10" in capsys.readouterr().err


def test_console_script_entry_point_exit_code(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "lakd", "train", "--model", "nope", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr


@pytest.mark.realdata
def test_real_cifar10_smoke_train_and_eval(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few hundred real CIFAR-10 images through the whole CLI path (decode, cache, train, eval)."""
    out = tmp_path / "real"
    args = ["train", "--model", "resnet8", "--dataset", "cifar10", "--data-root", str(shared_data), "--epochs", "1",
            "--out", str(out), "--no-progress", "data.train_limit=256", "data.test_limit=200", "data.batch_size=64"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val_top1"] >= 0 and rows[0]["img_per_s"] > 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "last.pt"), "--data-root", str(shared_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10000 and result["dataset"] == "cifar10"


def test_data_download_then_train_on_the_pickle_form(
    tmp_path: Path, server, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    """`lakd data download` from a local server, then train/eval from the official python-pickle layout."""
    name, md5, _ = _archive(tmp_path, server.served)
    root = tmp_path / "root"
    url = f"{server.url}/{name}"
    assert main(["data", "download", "cifar10", "--root", str(root), "--url", url, "--md5", "0" * 32]) == 2
    assert "MD5" in capsys.readouterr().err and not any(root.iterdir())
    assert main(["data", "download", "cifar10", "--root", str(root), "--url", url, "--md5", md5]) == 0
    assert main(["data", "info", "--root", str(root)]) == 0
    assert "python-pickle" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--dataset", "cifar10", "--data-root", str(root), "--epochs", "1",
                 "--out", str(out), "--no-progress", "data.val_size=2", "data.batch_size=4"]) == 0
    assert json.loads((out / "summary.json").read_text())["data"] == {"train": 8, "val": 2, "test": 10}


@pytest.fixture(scope="module")
def synthetic_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    assert main(["train", "--model", "resnet14", "--out", str(out), *TINY]) == 0
    return out / "best.pt"


@pytest.mark.parametrize("method", ["lakd", "kd"])
def test_distill_round_trip(tmp_path: Path, synthetic_teacher: Path, method: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / method
    assert main(["distill", "--method", method, "--teacher", str(synthetic_teacher), "--student", "resnet8",
                 "--out", str(out), *TINY, "distill.params.temperature=2"]) == 0
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]
    assert meta["arch"] == "resnet8" and meta["distill"]["method"] == method
    assert meta["distill"]["teacher_arch"] == "resnet14"
    assert meta["distill"]["compiled"] == []  # a few steps: never worth compiling (auto)
    from lakd.distill import make_params, params_as_dict
    from lakd.models import build_model

    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("resnet14", 10).modules())
    assert meta["distill"]["teacher_batchnorms_folded"] == n_bn  # every conv's BatchNorm

    # the fully resolved parameters: every default plus the override
    assert meta["distill"]["params"] == params_as_dict(make_params(method, {"temperature": 2}))
    assert meta["distill"]["params"]["temperature"] == 2.0 and len(meta["distill"]["params"]) > 3
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "best.pt"), "--json", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "resnet8"


def test_distill_with_a_compiled_teacher(tmp_path: Path, synthetic_teacher: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from lakd.compiling import can_compile

    out = tmp_path / "compiled"
    assert main(["distill", "--method", "lakd", "--teacher", str(synthetic_teacher), "--student", "resnet8",
                 "--out", str(out), *TINY, "distill.compile=true"]) == 0
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]
    assert meta["distill"]["compiled"] == (["teacher", "losses"] if can_compile(torch.device("cpu"))[0] else [])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed" not in err and "disagreed" not in err


def test_distill_bad_input(tmp_path: Path, synthetic_teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    base = ["distill", "--student", "resnet8", "--out", str(out), *TINY]
    cases = [
        (["--method", "kd"], "needs a teacher"),
        (["--method", "kdd", "--teacher", str(synthetic_teacher)], "did you mean 'kd'"),
        (["--method", "lakd", "--teacher", str(synthetic_teacher), "distill.params.ndam_wieght=1"],
         "did you mean 'ndam_weight'"),
        (["--method", "kd", "--teacher", str(synthetic_teacher), "data.synthetic_classes=7"],
         "predicts 10 classes but dataset 'synthetic' has 7"),
    ]
    not_a_ckpt = tmp_path / "junk.pt"
    not_a_ckpt.write_bytes(b"definitely not a checkpoint")
    cases.append((["--method", "kd", "--teacher", str(not_a_ckpt)], "cannot be loaded safely"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "meta": {"arch": "resnet999", "num_classes": 10}}, foreign)
    cases.append((["--method", "kd", "--teacher", str(foreign)], "unknown model 'resnet999'"))
    wrong_weights = tmp_path / "wrong.pt"
    ckpt = torch.load(synthetic_teacher, weights_only=True)
    ckpt["meta"]["arch"] = "resnet20"
    torch.save(ckpt, wrong_weights)
    cases.append((["--method", "kd", "--teacher", str(wrong_weights)], "do not fit architecture 'resnet20'"))
    cases.append((["--method", "reviewkd", "--teacher", str(synthetic_teacher), "data.batch_size=1"],
                  "needs at least 2"))
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
        assert not out.exists()


def test_tensorboard_event_files_next_to_csv(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb-run"
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY, "--epochs", "2",
                 "train.tensorboard=true"]) == 0
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val/top1", "test/top1", "train/loss", "lr"} <= set(tags)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = acc.Scalars("val/top1")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["val_top1"] for r in rows])


def test_images_too_small_for_a_model_is_one_clear_error(
    tmp_path: Path, synthetic_teacher: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair that cannot be matched at all: 2x2 images leave VGG8's pools nothing to pool, for the student or
    the teacher. The error names the model, the size and the smallest size that works; nothing is written."""
    from PIL import Image

    from lakd.models import build_model

    root = tmp_path / "tiny-images"
    for split in ("train", "test"):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (2, 2), (40 * i, 100 * c, 7)).save(folder / f"{i}.png")
    data = ["--dataset", "imagefolder", f"data.path={root}", "data.val_size=2", "data.batch_size=2", "--epochs", "1",
            "--no-progress"]
    vgg_teacher = tmp_path / "vgg8.pt"
    torch.save({"model": build_model("vgg8", 2).state_dict(), "meta": {"arch": "vgg8", "num_classes": 2}},
               vgg_teacher)
    resnet_teacher = tmp_path / "resnet8.pt"
    torch.save({"model": build_model("resnet8", 2).state_dict(), "meta": {"arch": "resnet8", "num_classes": 2}},
               resnet_teacher)
    out = tmp_path / "never"
    cases = [
        (["train", "--model", "vgg8"], "the model 'vgg8' cannot take 2x2 images"),
        (["distill", "--method", "lakd", "--student", "vgg8", "--teacher", str(resnet_teacher)],
         "the student model 'vgg8' cannot take 2x2 images"),
        (["distill", "--method", "fitnet", "--student", "resnet8", "--teacher", str(vgg_teacher)],
         "the teacher model 'vgg8' cannot take 2x2 images"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(out), *data]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "at least 8x8 pixels" in err and "Traceback" not in err, err
        assert not out.exists()


def test_yaml_alias_bomb_gives_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few hundred bytes of YAML aliases expand to ~10^8 items: the error echoes a bounded piece of it."""
    parts = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        parts.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    text = "train:\n  epochs: 1\nschedule:\n  milestones: [" + ", ".join(parts) + "]\n"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    assert len(text) < 600
    assert main(["train", "-c", str(bomb), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "schedule.milestones" in err and len(err) < 400 and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_sizes_that_allocate_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad, message in (("data.image_size=1000000", "data.image_size"), ("data.synthetic_size=10000000000",
                                                                          "data.synthetic_size")):
        assert main(["train", "--dataset", "imagefolder" if "image" in bad else "synthetic",
                     "--out", str(tmp_path / "never"), bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "out of range" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["data"], "needs an action"),
    (["eval", "--ckpt", "{dir}"], "is a folder, not a checkpoint file; did you mean"),
    (["eval", "--ckpt", "{dir}/best.pt", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--model", "resnet8", "--init-weights", "{dir}", "--out", "{dir}/new"], "is a folder, not a weights"),
    (["distill", "-c", "{dir}", "--out", "{dir}/new"], "is a folder, not a YAML file"),
])
def test_folders_and_missing_actions_get_one_clear_line(argv: list[str], message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "best.pt").write_bytes(b"")
    assert main([a.replace("{dir}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "new").exists()
