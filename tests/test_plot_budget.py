"""benchmarks/plot_budget.py: budgets read from <protocol>[-eN] folders, mean ± std per (method, budget), a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


def _load() -> ModuleType:
    return load_script("plot_budget.py")


def _result(folder: Path, name: str, epochs: int, top1: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"epochs": [{}] * epochs, "best_test_top1": top1}))


def test_budgets_are_collected_averaged_and_plotted(tmp_path: Path) -> None:
    pb = _load()
    _result(tmp_path / "proto", "kd-s0.json", 15, 80.0)
    _result(tmp_path / "proto", "kd-s1.json", 15, 82.0)
    _result(tmp_path / "proto-e3", "kd-s0.json", 3, 70.0)
    _result(tmp_path / "proto", "kd-ls-s0.json", 15, 99.0)  # another method: not KD
    _result(tmp_path / "other", "kd-s0.json", 15, 1.0)  # another protocol
    rows = pb.summarise(pb.collect(tmp_path, "proto", ["kd"]))
    assert [(r["epochs"], r["seeds"], r["mean"]) for r in rows] == [(3, 1, 70.0), (15, 2, 81.0)]
    assert rows[1]["std"] == pytest.approx(2 ** 0.5)
    out = tmp_path / "plot.png"
    pb.plot(rows, out, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
