"""benchmarks/gpu_check.sh: every step end to end on CPU with tiny synthetic runs, its JSON, and its usage errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["teacher", "kd", "lakd", "lakd_local", "torchrun_kd", "resume_kd", "export_onnx", "eval"]
TRAINING = {"teacher", "kd", "lakd", "lakd_local", "torchrun_kd", "resume_kd"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's python first
    env["PYTHON"] = sys.executable
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is faster, and leaves the other core alone
    env["TMPDIR"] = str(tmp_path)
    env.pop("LAKD_DATA", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    empty = tmp_path / "no-data"
    empty.mkdir(exist_ok=True)
    return ["--device", "cpu", "--steps", "3", "--teacher-arch", "resnet8", "--student-arch", "resnet8",
            "--batch", "8", "--eval-size", "16", "--out", str(tmp_path / "gpu.json"), "--work", str(tmp_path / "w"),
            "--data-root", str(empty), *extra]


def test_every_step_runs_on_cpu_and_the_json_says_so(tmp_path: Path) -> None:
    proc = _run(_tiny(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["ok"] is True and report["failed_steps"] == [] and report["interrupted"] is False
    assert report["device"] == "cpu" and report["torch"] and report["device_name"].startswith("cpu")
    assert report["data"]["dataset"] == "synthetic" and "no cifar10/train.npz" in report["data"]["why"]
    assert report["settings"]["steps"] == 3 and report["settings"]["teacher_arch"] == "resnet8"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    for name, step in steps.items():
        assert step["status"] in (("ok", "skipped") if name == "export_onnx" else ("ok",)), step
        if step["status"] == "ok":
            assert step["exit_code"] == 0 and step["wall_s"] > 0, step
    for name in TRAINING:
        step = steps[name]
        assert step["img_per_s"] > 0 and step["peak_mem_mb"] > 0, step
        assert step["runtime"].startswith("cpu") and step["world_size"] == 1, step
        assert Path(step["run_dir"], "summary.json").is_file()
    for name in TRAINING - {"resume_kd"}:
        assert steps[name]["epochs"] == [1] and steps[name]["train_steps"] == 3, steps[name]
        assert "--epochs 1" in steps[name]["command"] and "data.train_limit=24" in steps[name]["command"]
    assert "--method lakd" in steps["lakd_local"]["command"]
    assert "distill.params.backward=local" in steps["lakd_local"]["command"]
    assert "--nproc_per_node=1" in steps["torchrun_kd"]["command"]
    resume = steps["resume_kd"]
    assert resume["epochs"] == [1, 2] and resume["summary"]["epochs"] == 2 and resume["train_steps"] == 6
    assert [p["exit_code"] for p in resume["phases"]] == [0, 0]
    assert resume["phases"][1]["command"].endswith("--epochs 2 --resume")
    assert len(resume["img_per_s_per_epoch"]) == 2 and all(v > 0 for v in resume["img_per_s_per_epoch"])
    export = steps["export_onnx"]
    if export["status"] == "ok":
        assert export["onnx_bytes"] > 0 and export["onnxruntime_logits_shape"] == [2, 10]
    else:
        assert export["note"] == "skipped: onnx not installed"
    assert steps["eval"]["eval"]["split"] == "test" and steps["eval"]["eval"]["top1"] is not None
    assert "top-1" in proc.stdout and "all steps ok" in proc.stdout  # the table
    # nothing written but the JSON and the work dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.json", "no-data", "w"]
    assert not any((tmp_path / "no-data").iterdir())


def test_a_failing_step_gives_exit_1_and_still_writes_the_json(tmp_path: Path) -> None:
    proc = _run(_tiny(tmp_path, "--teacher-arch", "no_such_net"), tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["ok"] is False and report["failed_steps"] == STEPS
    teacher, *rest = report["steps"]
    assert teacher["status"] == "failed" and teacher["exit_code"] == 2
    assert any("no_such_net" in line for line in teacher["log_tail"])
    assert all(s["status"] == "not_run" and "teacher step failed" in s["note"] for s in rest)


@pytest.mark.parametrize("args, message", [
    (["--no-such-flag"], "unknown argument '--no-such-flag'"),
    (["--device", "tpu"], "--device must be cuda or cpu"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps=abc"], "--steps must be a positive integer"),
    (["--out"], "--out needs a value"),
    (["--resume-mode", "sometimes"], "--resume-mode must be epochs or signal"),
])
def test_bad_usage_prints_usage_and_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run([*args, "--work", str(tmp_path / "w")] if args != ["--out"] else args, tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "usage: bash benchmarks/gpu_check.sh" in proc.stderr
    assert not (tmp_path / "w").exists() and not list(tmp_path.glob("*.json"))


def test_a_non_empty_work_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "old").write_text("x")
    proc = _run(["--device", "cpu", "--work", str(tmp_path / "w")], tmp_path, timeout=30)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["old"]


def test_help_exits_0() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--data-root DIR" in proc.stdout and "--steps N" in proc.stdout
