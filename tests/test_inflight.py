"""benchmarks/inflight.sh: an unfinished bench run folder survives a move to a new machine; finished ones are not
carried, and a restore never replaces a run folder that is already there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch

from tests.scripts import BENCHMARKS


def run(root: Path, action: str) -> str:
    return subprocess.run(["bash", str(root / "benchmarks" / "inflight.sh"), action], check=True,
                          capture_output=True, text=True).stdout


def test_save_then_restore_on_a_new_checkout(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(BENCHMARKS / "inflight.sh", tmp_path / "benchmarks")
    unfinished = tmp_path / "runs/study/p/local-kd-s0"
    finished = tmp_path / "runs/p/kd-s0"
    for folder in (unfinished, finished):
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"checkpoint")
        (folder / "metrics.jsonl").write_text("{}\n")
        (folder / ".lock").write_text("1")
    (finished / "summary.json").write_text("{}")
    weights = {"w": torch.arange(4.0)}
    torch.save({"model": weights, "meta": {"arch": "m"}, "epoch": 3, "best": {"epoch": 3}, "optimizer": {"m": 1},
                "task": weights, "rng": {"torch": torch.zeros(2)}}, unfinished / "best.pt")
    (unfinished / "last.prev.pt").write_bytes(b"older")
    assert run(tmp_path, "save").split() == ["saved", "runs/study/p/local-kd-s0"]
    stored = tmp_path / "benchmarks/inflight/runs/study/p/local-kd-s0"
    assert sorted(p.name for p in stored.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    best = torch.load(stored / "best.pt", weights_only=True)  # weights and metadata travel, training state does not
    assert sorted(best) == ["best", "epoch", "meta", "model"] and torch.equal(best["model"]["w"], weights["w"])
    assert not (tmp_path / "benchmarks/inflight/runs/p").exists()

    shutil.rmtree(tmp_path / "runs")  # the new machine
    assert "restored runs/study/p/local-kd-s0" in run(tmp_path, "restore")
    assert (unfinished / "last.pt").read_bytes() == b"checkpoint"
    (unfinished / "last.pt").write_bytes(b"newer")  # the run went on here
    assert "kept" in run(tmp_path, "restore")
    assert (unfinished / "last.pt").read_bytes() == b"newer"
