"""Fault tolerance: SIGTERM saves a mid-epoch checkpoint, SIGKILL loses only the current epoch, a corrupt
last.pt falls back to the previous one — and every resumed run ends with the uninterrupted run's exact weights
and metrics (CPU, same thread count)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lakd.cli import main
from lakd.engine import load_checkpoint

# One intra-op thread in every run, in-process and subprocess alike: float results depend on the thread count, and
# the module-scoped reference runs before conftest's per-test thread setting (so OMP_NUM_THREADS=1 in the
# environment used to give it another count than the runs it is compared with).
ARGS = ["train", "--model", "resnet8", "--dataset", "synthetic", "--epochs", "3", "--no-progress",
        "--precision", "fp32", "data.synthetic_size=640", "data.val_size=64", "data.batch_size=32",
        "train.threads=1"]
METRICS = ("train_loss", "train_top1", "val_top1", "val_loss", "test_top1", "lr")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: ra[k] for k in METRICS} == {k: rb[k] for k in METRICS}


def start_run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lakd", *ARGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, epoch: int, timeout: float = 300.0) -> None:
    """Until last.pt holds ``epoch`` completed epochs (metrics are written just before the checkpoint)."""
    metrics, last = out / "metrics.jsonl", out / "last.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= epoch and last.is_file() \
                and load_checkpoint(last)["epoch"] >= epoch:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("run too slow")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_epoch_then_resumed_equals_uninterrupted(reference: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    proc = start_run(out)
    wait_for_checkpoint(out, proc, 1)
    proc.send_signal(sig)  # early in epoch 2
    stdout, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert "stopped by SIGTERM" in stderr and "--resume" in stderr
        partial = load_checkpoint(out / "last.pt").get("partial")
        if partial is not None:  # normally: the signal landed mid-epoch
            assert partial["epoch"] == 1 and 0 < partial["step"] < 18
    else:
        assert proc.returncode == -signal.SIGKILL
    assert len((out / "metrics.jsonl").read_text().splitlines()) < 3
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert_same_run(reference, out)


def test_stop_request_saves_mid_epoch_and_resume_is_exact(reference: Path, tmp_path: Path) -> None:
    """The same path without timing luck: the stop request is raised at a known step of epoch 2."""
    from lakd.engine.trainer import Trainer

    out = tmp_path / "run"
    original = Trainer.train_epoch

    def stop_in_epoch_2(self: Trainer, epoch: int) -> dict[str, float]:
        if epoch == 1:
            forward = self.task.forward_train
            calls = {"n": 0}

            def counting(*a: object, **k: object) -> object:
                calls["n"] += 1
                if calls["n"] == 7:
                    self.stop_signal = signal.SIGTERM
                return forward(*a, **k)

            self.task.forward_train = counting  # type: ignore[method-assign]
        return original(self, epoch)

    Trainer.train_epoch = stop_in_epoch_2  # type: ignore[method-assign]
    try:
        assert main([*ARGS, "--out", str(out)]) == 128 + signal.SIGTERM
    finally:
        Trainer.train_epoch = original  # type: ignore[method-assign]
    partial = load_checkpoint(out / "last.pt")["partial"]
    assert partial["epoch"] == 1 and partial["step"] == 7 and partial["seen"] == 7 * 32
    assert (out / "last.prev.pt").is_file()  # the epoch-1 checkpoint is kept beside it
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert_same_run(reference, out)


def test_corrupt_last_checkpoint_falls_back_to_previous(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    proc = start_run(out)
    wait_for_checkpoint(out, proc, 2)
    last = out / "last.pt"
    proc.kill()
    proc.communicate(timeout=60)
    assert (out / "last.prev.pt").is_file()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # torn by a failing disk
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "cannot be loaded safely" in printed and "last.prev.pt" in printed
    assert_same_run(reference, out)


def test_a_refused_last_checkpoint_is_never_kept_as_the_previous_one(tmp_path: Path) -> None:
    """Resumed from last.prev.pt because last.pt was torn, the next save replaces last.pt and leaves last.prev.pt
    the good one (the torn file was rotated into last.prev.pt, losing the only good checkpoint; issue 33)."""
    out = tmp_path / "run"
    two = [*ARGS[:ARGS.index("--epochs")], "--epochs", "2", *ARGS[ARGS.index("--epochs") + 2:], "--out", str(out)]
    assert main(two) == 0
    good_previous = (out / "last.prev.pt").read_bytes()  # epoch 1
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # epoch 2, torn
    assert main([*two, "--resume"]) == 0  # back to epoch 1, epoch 2 again, saved
    assert (out / "last.prev.pt").read_bytes() == good_previous
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lakd.checkpoint as checkpoint

    out = tmp_path / "run"
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "1", *ARGS[ARGS.index("--epochs") + 2:], "--out", str(out)]
    assert main(args) == 0
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj: object, f: object, *a: object, **k: object) -> None:
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    assert main([*args[:-2], "--out", str(out), "--resume", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "could not write a checkpoint" in err and "No space left on device" in err and "--resume" in err
    assert (out / "last.pt").read_bytes() == before  # the epoch-1 checkpoint survived
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_run_folder_has_one_owner(tmp_path: Path) -> None:
    """A second run on a folder a live run owns (plain, --force or --resume) is refused and changes nothing."""
    out = tmp_path / "run"
    first = start_run(out, "--epochs", "20")
    try:
        wait_for_checkpoint(out, first, 1)
        before = (out / "metrics.jsonl").read_text()
        for extra in ([], ["--force"], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "lakd", *ARGS, "--out", str(out), *extra],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, (extra, second.stderr)
            if extra:
                assert "in use by another lakd process" in second.stderr and "Traceback" not in second.stderr
            assert (out / "metrics.jsonl").read_text().startswith(before)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    # the owner is gone: the lock went with it, and the run resumes
    from lakd.runfolder import lock_folder

    os.close(lock_folder(out))


def test_sigterm_to_bench_stops_and_checkpoints_its_child(tmp_path: Path) -> None:
    """bench passes SIGTERM on to its `lakd distill` child: no orphan keeps training, the child checkpoints."""
    import lakd.bench as bench

    marker = tmp_path / "child.pid"
    child_code = ("import os, signal, sys, time\n"
                  f"open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
                  "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))\n"
                  "time.sleep(60)\n")
    src = str(Path(bench.__file__).parents[1])
    driver = (f"import sys; sys.path.insert(0, {src!r})\n"
              "from lakd.bench import run_child\n"
              f"sys.exit(run_child([sys.executable, '-c', {child_code!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 30
    while not marker.is_file() or not marker.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child_pid = int(marker.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_non_finite_weights_are_never_saved_nor_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer step that makes a weight inf (here the last step of epoch 2, forced) stops the run before
    the save: last.pt / best.pt keep epoch 1's finite weights, and the run exits 2 with one clear line."""
    out = tmp_path / "blowup"
    args = ["train", "--model", "resnet8", "--dataset", "synthetic", "--epochs", "3", "--no-progress",
            "--precision", "fp32", "data.synthetic_size=80", "data.val_size=16", "data.batch_size=32", "--out"]
    original = torch.optim.SGD.step
    steps = {"n": 0}

    def step_then_blow_up(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = original(self, *a, **k)
        steps["n"] += 1
        if steps["n"] == 4:  # 2 steps per epoch: the last step of epoch 2
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_blow_up)
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err
    assert "weights became non-finite at epoch 2" in err and "Traceback" not in err
    monkeypatch.undo()
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    # a crafted checkpoint with NaN weights: eval refuses it
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["model"]["head.fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    assert main(["eval", "--ckpt", str(tmp_path / "nan.pt"), "--precision", "fp32"]) == 2
    assert "non-finite weights (head.fc.weight)" in capsys.readouterr().err
    # ... and so does every other door a model comes in through (issue 33): as a teacher (it was blamed on the
    # learning rate after the run started), to export, as a weights file
    teach = ["distill", "--method", "kd", "--teacher", str(tmp_path / "nan.pt"), "--student", "resnet8",
             *args[args.index("--dataset"):], str(tmp_path / "student")]
    assert main(teach) == 2
    err = capsys.readouterr().err
    assert "teacher" in err and "non-finite weights (head.fc.weight)" in err and "optim.lr" not in err
    assert not (tmp_path / "student").exists()
    assert main(["export", "--ckpt", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "nan.safetensors")]) == 2
    assert "non-finite weights (head.fc.weight)" in capsys.readouterr().err
    assert not (tmp_path / "nan.safetensors").exists()
    torch.save(ckpt["model"], tmp_path / "nan_weights.pt")
    init = ["train", "--model", "resnet8", "--init-weights", str(tmp_path / "nan_weights.pt"),
            *args[args.index("--dataset"):], str(tmp_path / "init")]
    assert main(init) == 2
    assert "weights file" in capsys.readouterr().err
    for bad in ("optim.lr=.inf", "optim.weight_decay=.inf", "distill.params.kd_weight=.inf"):
        command = "distill" if bad.startswith("distill") else "train"
        extra = (["--method", "kd", "--teacher", str(out / "last.pt"), "--student", "resnet8"] if command == "distill"
                 else ["--model", "resnet8"])
        assert main([command, *extra, "--dataset", "synthetic", "--out", str(tmp_path / "never"), bad]) == 2, bad
        assert "finite" in capsys.readouterr().err, bad


def test_resume_refuses_changed_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume continues the run as configured: another lr, method parameter or edited config is refused; more
    epochs are allowed with a note, and config.yaml then records them."""
    out = tmp_path / "run"
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "1", *ARGS[ARGS.index("--epochs") + 2:], "--out", str(out)]
    assert main(args) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    for extra, key in ((["optim.lr=0.5"], "optim.lr (0.1 -> 0.5)"), (["data.batch_size=16"], "data.batch_size")):
        assert main([*args, "--resume", *extra]) == 2
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err, err
        assert (out / "last.pt").read_bytes() == before
    assert main([*args, "--resume", "train.epochs=2"]) == 0
    assert "train.epochs 1 -> 2" in capsys.readouterr().err
    assert "epochs: 2" in (out / "config.yaml").read_text()


def test_writes_into_a_run_folder_never_follow_planted_links(tmp_path: Path) -> None:
    """Links planted in a run folder (metrics, run.json, summary, curves) are replaced by the run's own files on
    --resume and by `lakd report`; the files they pointed at are untouched."""
    out = tmp_path / "run"
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "1", *ARGS[ARGS.index("--epochs") + 2:], "--out", str(out)]
    assert main(args) == 0
    victims = {}
    for name in ("metrics.jsonl", "metrics.csv", "run.json", "summary.json", "curves.png"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        victims[name] = victim
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(victim)
    assert main([*args, "--resume", "train.epochs=2"]) == 0
    assert main(["report", str(out)]) == 0
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
        assert not (out / name).is_symlink(), name
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_repairs_a_best_checkpoint_left_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash between writing last.pt and best.pt leaves best.pt one best epoch behind: resume rewrites it."""
    out = tmp_path / "run"
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "2", *ARGS[ARGS.index("--epochs") + 2:], "--out", str(out)]
    assert main([*args[:-2], "--epochs", "1", "--out", str(out)]) == 0
    epoch1 = (out / "best.pt").read_bytes()
    assert main([*args, "--resume"]) == 0
    last = load_checkpoint(out / "last.pt")
    if last["best"]["epoch"] != 2:
        pytest.skip("epoch 2 was not the best on this data; nothing to repair")
    (out / "best.pt").write_bytes(epoch1)  # as if the process died right after writing last.pt
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "rewritten from" in capsys.readouterr().out
    assert load_checkpoint(out / "best.pt")["epoch"] == 2


def test_unusable_locations_and_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("train:\n  epochs: 1 # caf\xe9\n".encode("latin-1"))
    assert main(["train", "-c", str(config), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*ARGS[:ARGS.index("--epochs")], "--epochs", "1", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lakd: error:") and "Traceback" not in err


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 10 ** 9, "meta.num_classes = 1000000000 is not a class count"),
    ("num_classes", "10", "is not a class count"),
    ("num_classes", True, "is not a class count"),
    ("arch", ["resnet8"], "meta.arch"),
    ("image_size", 10 ** 6, "meta.image_size"),
    ("mean", [0.5, 0.5], "meta.mean"),
    ("std", [0.2, 0.0, 0.2], "three positive channel values"),
    ("std", [0.2, float("nan"), 0.2], "meta.std"),
    ("stages", "layer1", "meta.stages"),
])
def test_crafted_checkpoint_metadata_is_refused_before_anything_is_built(
        field: str, value: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint's meta decides what gets allocated (the head's width, the export's input): checked first."""
    from lakd.models import build_model

    meta = {"arch": "resnet8", "num_classes": 10, "dataset": "synthetic", "image_size": 32,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], field: value}
    path = tmp_path / "crafted.pt"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "meta": meta}, path)
    for argv in (["eval", "--ckpt", str(path)], ["export", "--ckpt", str(path), "--out", str(tmp_path / "o.st")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o.st").exists()
