"""`lakd demo --tiny`: every step of the main command (teacher, KD, LAKD, table, curves, NDAM pictures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakd.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_tiny_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| method | test top-1 |" in printed and f"Outputs in {out}/" in printed
    result = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["kd", "lakd"]
    for row in result["rows"]:
        summary = json.loads((Path(row["run"]) / "summary.json").read_text())
        assert row["test_top1"] == summary["last_test_top1"] and row["img_per_s"] > 0
        # each sub-run is one lakd.fit call (recorded as such), shown as the command that does the same
        assert summary["command"].startswith("lakd.fit('resnet8', ") and summary["config"]["distill"]["method"] == \
            row["method"]
        assert f"$ lakd distill --method {row['method']} --teacher" in printed
    assert 0 <= result["teacher_top1"] <= 100
    assert len(result["ndam"]["lakd"]) == 3  # resnet8: three stage modules
    for png in ("curves.png", "ndam_kd.png", "ndam_lakd.png"):
        assert (out / png).read_bytes()[:8] == PNG_SIGNATURE, png
    assert (out / "teacher" / "best.pt").is_file()  # --tiny trains its own teacher
    # A second demo into the same folder is refused (nothing overwritten) unless --force.
    before = (out / "comparison.json").read_bytes()
    assert main(["demo", "--tiny", "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "comparison.json").read_bytes() == before
    # --epochs and --train-limit count with --tiny too (they were accepted and ignored; issue 33)
    assert main(["demo", "--tiny", "--out", str(out), "--no-progress", "--force", "--epochs", "2",
                 "--train-limit", "160"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert (result["epochs"], result["train_limit"]) == (2, 160)
    for row in result["rows"]:
        assert len((Path(row["run"]) / "metrics.jsonl").read_text().splitlines()) == 2
        assert json.loads((Path(row["run"]) / "summary.json").read_text())["config"]["data"]["train_limit"] == 160


def test_demo_without_data_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--data-root", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 is not under the data root" in err and "lakd data download cifar10" in err
    assert not (tmp_path / "d").exists()


def test_the_demo_turns_its_first_students_early_estimate_into_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    from lakd.demo import _DemoLog

    log = _DemoLog(2)
    log("epoch 1/2 | loss 2.3")
    log("estimate: 120 ms a step, ~3.5 min of training left (2 epochs x 156 steps; evaluation adds to it)")
    log("estimate: 90 ms a step, ~2.5 min of training left (2 epochs x 156 steps; evaluation adds to it)")
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("demo: ")] == [
        "demo: about 7 min of training for its 2 students (from this one's first steps), plus evaluation and pictures"]
    assert len(lines) == 4  # every run line is still printed
