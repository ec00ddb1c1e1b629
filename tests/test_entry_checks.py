"""Values checked where they enter, one clear error whatever the door (issue 33's leftovers): a huge seed, an
unknown precision at `lakd eval`, a torn summary or result JSON at `report` and `bench --summary-only`."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakd.cli import main
from lakd.engine import resolve_runtime
from lakd.errors import LakdError

TINY = ["--dataset", "synthetic", "--epochs", "1", "--no-progress", "--precision", "fp32",
        "data.synthetic_size=64", "data.val_size=16", "data.batch_size=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("entry") / "run"
    assert main(["train", "--model", "resnet8", *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("override", ["--seed=99999999999999999999", "--seed=-1", "data.split_seed=4294967296"])
def test_a_seed_out_of_range_is_one_error_before_anything_is_written(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", *TINY, override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed' = " in err and "out of range: must be in [0, 4294967295]" in err and "Traceback" not in err
    assert not out.exists()


def test_an_unknown_precision_is_one_error_at_every_door(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--ckpt", str(run / "best.pt"), "--precision", "bf15"]) == 2
    assert "precision 'bf15' is not one of auto, bf16, fp16, fp32 (did you mean 'bf16'?)" in capsys.readouterr().err
    with pytest.raises(LakdError, match="precision 'half' is not one of"):
        resolve_runtime("cpu", "half", "auto")


def test_a_torn_summary_or_result_is_one_error(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torn = tmp_path / "torn"
    torn.mkdir()
    for name in ("metrics.jsonl", "run.json"):
        (torn / name).write_bytes((run / name).read_bytes())
    (torn / "summary.json").write_text('{"epochs": 1, "last_te')
    assert main(["report", str(torn)]) == 2
    assert f"run summary '{torn / 'summary.json'}' is not readable JSON" in capsys.readouterr().err
    results = tmp_path / "results" / "cifar10-cpu"
    results.mkdir(parents=True)
    (results / "kd-s0.json").write_text("[1, 2")
    assert main(["bench", "cifar10-cpu", "--summary-only", "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"result '{results / 'kd-s0.json'}' is not readable JSON" in err and "Traceback" not in err


def test_bytes_that_are_no_torch_file_are_called_so_not_pickled_objects(tmp_path: Path) -> None:
    import io
    import os

    import torch

    from lakd.checkpoint import load_checkpoint
    from lakd.models.weights import read_state_dict

    noise, text, objects = tmp_path / "noise.pt", tmp_path / "notes.pt", tmp_path / "objects.pt"
    noise.write_bytes(bytes(range(256)) * 2)
    text.write_text("not a checkpoint\n")

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.getcwd, ())

    buffer = io.BytesIO()
    torch.save({"model": Payload()}, buffer)
    objects.write_bytes(buffer.getvalue())
    for read in (load_checkpoint, read_state_dict):
        for path in (noise, text):
            with pytest.raises(LakdError, match="it is not a PyTorch file") as caught:
                read(path)
            assert "pickled Python objects" not in str(caught.value)
        with pytest.raises(LakdError, match="it holds pickled Python objects"):
            read(objects)


def test_an_overflowing_term_weight_is_named_not_the_term_that_turns_nan_after_it(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kd_weight 1e37 keeps every loss finite but overflows the gradient: the error names 'kd' (it named 'ce',
    which only became NaN a step later, through weights the overflowing step had already ruined)."""
    args = ["distill", "--method", "kd", "--teacher", str(run / "best.pt"), "--student", "resnet8", *TINY,
            "distill.params.kd_weight=1e37", "--out", str(tmp_path / "kd")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the gradient became non-finite" in err and "'kd' = " in err and "'ce'" not in err


def test_a_reader_that_stops_reading_is_no_disk_error(run: Path) -> None:
    """`lakd report RUN | head -1`: the pipe closing is not a full disk (it was reported as one)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lakd", "report", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the report is written (python starts up first): its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert "error" not in err and "Traceback" not in err


def test_every_config_the_help_texts_cite_exists() -> None:
    import re

    from lakd.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    parser = build_parser()
    texts = [parser.format_help()] + [sub.format_help() for action in parser._subparsers._group_actions
                                      for sub in action.choices.values()]
    cited = {m for text in texts for m in re.findall(r"configs/[\w/.-]+\.yaml", text)}
    assert cited and not [c for c in cited if not (root / c).is_file()]


def test_the_lists_say_what_each_method_is_and_that_library_models_work(capsys: pytest.CaptureFixture[str]) -> None:
    from lakd.distill import list_methods, method_class

    assert main(["distill", "--list-methods"]) == 0
    out = capsys.readouterr().out
    for name in list_methods():
        assert f"{name}: {method_class(name).summary}" in out and method_class(name).summary
    assert "temperature=4.0" in out.split("\nkd: ")[1].split("\n\n")[0].split("\nlakd: ")[0]
    assert main(["train", "--list-models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "torchvision:<name>" in out and "timm:<name>" in out


def test_a_small_checkpoint_naming_a_huge_model_allocates_nothing_before_it_is_refused(tmp_path: Path) -> None:
    """A resnet8 checkpoint whose metadata names mobilenetv2 (1280 features into its head) with the largest allowed
    class count: the weights are compared by shape on the meta device and refused, without building the 4.8 GB
    head first (issue 33)."""
    import subprocess
    import sys

    import torch

    from lakd.checkpoint import MAX_CLASSES
    from lakd.models import build_model

    path = tmp_path / "small.pt"
    torch.save({"model": build_model("resnet8", 10).state_dict(),
                "meta": {"arch": "mobilenetv2", "num_classes": MAX_CLASSES}}, path)
    head_mb = 1280 * MAX_CLASSES * 4 / 2**20
    code = ("import resource, sys\n"
            "from lakd.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint\n"
            "from lakd.errors import LakdError\n"
            f"ckpt = load_checkpoint({str(path)!r})\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n"
            "    model_from_checkpoint(ckpt, checkpoint_meta(ckpt, 'x'), 'checkpoint')\n"
            "except LakdError as e:\n"
            "    print('refused:', str(e)[:80])\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused: checkpoint: weights do not fit architecture 'mobilenetv2'" in done.stdout, done.stderr[-500:]
    grew_mb = int(done.stdout.strip().splitlines()[-1])  # peak growth over the imports and the file itself
    assert head_mb > 4000 and grew_mb < 500  # the head alone would be head_mb


@pytest.mark.parametrize(("data", "message"), [
    ({"dataset": "synthetic", "synthetic_size": 10**9}, "data.synthetic_size"),
    ({"dataset": "synthetic", "val_size": "many"}, "val_size"),
    ({"dataset": "synthetic", "evil": 1}, "meta.data must be a mapping of"),
    ({"dataset": "synthetic", "image_size": 10**6}, "data.image_size"),
])
def test_eval_checks_the_data_a_checkpoint_names_like_a_config(
    data: dict, message: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lakd eval` built its data from a checkpoint's meta.data unchecked (gigabytes allocated, arbitrary keys);
    now the config schema checks it, as it would a config file's data section (issue 33)."""
    import torch

    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["meta"]["data"] = data
    crafted = tmp_path / "crafted.pt"
    torch.save(ckpt, crafted)
    assert main(["eval", "--ckpt", str(crafted)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=1e38", "'optim.lr' = 1e+38 is out of range: must be > 0, finite and <= 100"),
    ("train.threads=100000000", "'train.threads' = 100000000 is out of range"),
    ("data.crop_padding=100000", "'data.crop_padding' = 100000 is out of range"),
])
def test_values_that_pass_a_lower_bound_and_fail_later_have_an_upper_one(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A learning rate near the float limit, a thread count and a crop padding no machine has: one error before
    the run folder is written, not a traceback (or NaN weights) mid-run (issue 33)."""
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", *TINY, override, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_validation_given_as_a_fraction_and_a_count_that_does_not_fit(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The data decides: a count that would hold out half the training set is refused with the fraction to use;
    a fraction holds out that share (issue 34)."""
    import json

    common = ["train", "--model", "resnet8", "--dataset", "synthetic", "data.synthetic_size=100", "--epochs", "1",
              "--batch-size", "16", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 2  # the default 5,000 on 100 images
    assert "give a fraction instead (data.val_size=0.1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([*common, "data.val_size=0.2", "--out", str(tmp_path / "b")]) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["data"] == {"train": 80, "val": 20, "test": 25}
    assert run["augmentation"] == "pad_crop"  # data.augmentation=auto, as resolved for 32-px images
    assert main([*common, "data.val_size=2.5", "--out", str(tmp_path / "c")]) == 2
    assert "a whole count of images, or a fraction in (0, 1)" in capsys.readouterr().err


def test_a_teacher_is_not_fed_another_image_size_than_it_learned_on(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.scripts import write_image_folder

    write_image_folder(tmp_path / "img", 3, {"train": 10, "test": 2})
    data = ["--dataset", "imagefolder", f"data.path={tmp_path / 'img'}", "data.val_size=0.2", "--epochs", "1",
            "--batch-size", "8", "--no-progress"]
    assert main(["train", "--model", "resnet8", "--out", str(tmp_path / "t"), *data]) == 0
    capsys.readouterr()
    assert main(["distill", "--method", "kd", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8",
                 "data.image_size=24", "--out", str(tmp_path / "s"), *data]) == 2
    err = capsys.readouterr().err
    assert "trained on 32x32 images, but this data gives 24x24" in err and "data.image_size=32" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("method", "name"), [("kd", "temperature"), ("dkd", "temperature"), ("nd", "temperature"),
                                              ("crd", "nce_t"), ("dist", "tau"), ("lakd", "temperature"),
                                              ("lakd-study", "ndam_tau")])
def test_softmax_temperatures_have_bounds(method: str, name: str) -> None:
    """Near zero, logits / T overflow bf16 and the softmax is one-hot; far above, it is uniform (issue 33)."""
    from lakd.distill import make_params

    for bad in (1e-9, 0.001, 1e6, float("nan")):
        with pytest.raises(LakdError, match=name):
            make_params(method, {name: bad})
    make_params(method, {name: 0.07})  # CRD's published NCE temperature stays allowed
    make_params(method, {name: 8.0})


def test_onnx_export_refuses_a_trace_size_it_would_allocate_gigabytes_for(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from lakd.models import build_model

    path = tmp_path / "wide.pt"
    torch.save({"model": build_model("resnet8", 10).state_dict(),
                "meta": {"arch": "resnet8", "num_classes": 10, "image_size": 4096}}, path)  # an allowed size
    assert main(["export", "--ckpt", str(path), "--format", "onnx"]) == 2
    assert "ONNX export traces the model on 4096x4096 images" in capsys.readouterr().err
    assert not (tmp_path / "wide.onnx").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("labels", ["a"] * 20), ("labels", [[1, 2]] * 19 + [[1]]), ("labels", {"x": 1}), ("labels", [1.5] * 20),
    ("labels", [True] * 20), ("label_names", 5), ("label_names", []),
])
def test_malformed_cifar_pickles_are_one_clear_error(field: str, value: object, tmp_path: Path) -> None:
    """Class names that are not a list and labels that are not integer indices (issue 33's two leftover
    malformed pickles ended in a TypeError / ValueError traceback)."""
    import pickle

    import numpy as np

    from lakd.data.safe_pickle import read_cifar_python, write_cifar_python

    write_cifar_python(tmp_path, "cifar10", np.zeros((20, 32, 32, 3), np.uint8), np.arange(20) % 10,
                       [f"c{i}" for i in range(10)], split="test")
    path = tmp_path / "cifar-10-batches-py" / ("batches.meta" if field == "label_names" else "test_batch")
    content = pickle.loads(path.read_bytes(), encoding="bytes")
    content[field.encode()] = value
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(LakdError, match=f"'{field}' must be"):
        read_cifar_python(tmp_path, "cifar10", "test")


def test_a_folder_a_checkpoint_records_is_read_only_when_the_user_names_it(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """meta.data.path of a checkpoint from elsewhere must not make eval or explain read any folder on the machine
    (issue 33): they ask for --data-path, which then reads it."""
    from tests.scripts import write_image_folder

    write_image_folder(tmp_path / "img", 3, {"train": 6, "test": 2})
    assert main(["train", "--model", "resnet8", "--dataset", "imagefolder", f"data.path={tmp_path / 'img'}",
                 "data.val_size=0.2", "--epochs", "1", "--batch-size", "4", "--no-progress",
                 "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "t" / "best.pt")
    for argv in (["eval", "--ckpt", ckpt], ["explain", "--teacher", ckpt, "--student", ckpt, "--images", "2",
                                             "--out", str(tmp_path / "e.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"trained on the folder '{tmp_path / 'img'}'" in err and "add --data-path" in err, err
        assert main([*argv, "--data-path", str(tmp_path / "img")]) == 0
        capsys.readouterr()
    assert (tmp_path / "e.png").is_file()
