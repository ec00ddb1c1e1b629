"""`lakd bench` and `lakd demo` from an installed package, away from the source checkout: the wheel carries the
protocol/method configs and the protocols' teachers, and paths the configs name resolve to those copies."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(ROOT), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    site = out / "site"
    with zipfile.ZipFile(next(out.glob("lakd-*.whl"))) as wheel:
        wheel.extractall(site)
    return site


def lakd(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lakd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_ships_configs_and_protocol_teachers(installed: Path) -> None:
    assert (installed / "lakd" / "configs" / "protocols" / "cifar10-cpu.yaml").is_file()
    assert (installed / "lakd" / "configs" / "methods" / "lakd.yaml").is_file()
    assert (installed / "lakd" / "teachers" / "cifar10_resnet56_e8.pt").is_file()


def test_bench_and_configs_work_away_from_the_checkout(installed: Path, tmp_path: Path) -> None:
    plan = lakd(installed, tmp_path, "bench", "cifar10-cpu", "--dry-run", "--methods", "kd", "lakd", "--seeds", "0")
    assert plan.returncode == 0, plan.stderr
    assert str(installed / "lakd" / "configs" / "methods" / "kd.yaml") in plan.stdout
    # the protocol's config names its teacher as benchmarks/teachers/...: found in the package, loaded, and then
    # refused for the right reason (it was trained on CIFAR-10, not on the synthetic set)
    run = lakd(installed, tmp_path, "distill", "-c", "configs/cifar10_cpu.yaml", "-c", "configs/methods/kd.yaml",
               "--dataset", "synthetic", "--epochs", "1", "--out", "r", "data.val_size=64")
    assert run.returncode == 2 and "trained on 'cifar10'" in run.stderr, run.stderr
    assert not (tmp_path / "r").exists()
    demo = subprocess.run([sys.executable, "-c", "from lakd.demo import COMMITTED_TEACHER as t; print(t.is_file(), t)"],
                          cwd=tmp_path, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert demo.stdout.startswith(f"True {installed}"), demo.stdout + demo.stderr
