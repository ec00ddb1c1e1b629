"""benchmarks/learning_curves.py: the seed mean of a per-epoch metric, read from result JSONs, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script


@pytest.fixture
def curves():
    return load_script("learning_curves.py")


def put(folder: Path, method: str, seed: int, vals: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    epochs = [{"epoch": i + 1, "val_top1": v} for i, v in enumerate(vals)]
    (folder / f"{method}-s{seed}.json").write_text(json.dumps({"epochs": epochs, "best_val_top1": max(vals)}))


def test_the_table_averages_each_epoch_over_the_seeds(curves, tmp_path: Path, capsys) -> None:
    put(tmp_path, "lakd", 0, [10.0, 20.0, 30.0])
    put(tmp_path, "lakd", 1, [12.0, 23.0, 31.0])
    put(tmp_path, "kd", 0, [15.0, 25.0])  # a shorter run: no epoch 3
    (tmp_path / "summary.json").write_text("{}")  # not a run: skipped
    assert curves.main([str(tmp_path), "--methods", "lakd", "kd", "--epochs", "1", "2", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| method | seeds | epoch 1 | epoch 2 | epoch 3 |"
    assert lines[2] == "| lakd | 0,1 | 11.0 | 21.5 | 30.5 |"
    assert lines[3] == "| kd | 0 | 15.0 | 25.0 | – |"


def test_an_epoch_only_some_seeds_reached_is_not_averaged_over_fewer(curves, tmp_path: Path) -> None:
    put(tmp_path, "lakd", 0, [10.0, 20.0])
    put(tmp_path, "lakd", 1, [12.0])
    table = curves.curve_table(curves.load_histories(tmp_path, None), [1, 2], "val_top1")
    assert table.splitlines()[2] == "| lakd | 0,1 | 11.0 | – |"


def test_folders_side_by_side_and_a_seed_filter(curves, tmp_path: Path, capsys) -> None:
    put(tmp_path / "main", "lakd", 0, [10.0, 20.0])
    put(tmp_path / "main", "lakd", 1, [30.0, 40.0])
    put(tmp_path / "study", "lakd-no-ramp", 0, [14.0, 21.0])
    argv = [str(tmp_path / "main"), str(tmp_path / "study"), "--epochs", "1", "2", "--seeds", "0"]
    assert curves.main([*argv, "--methods", "lakd", "lakd-no-ramp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| lakd | 0 | 10.0 | 20.0 |", "| lakd-no-ramp | 0 | 14.0 | 21.0 |"]
    assert curves.main([*argv[:2], "--seeds", "1", "--methods", "lakd-no-ramp"]) == 2  # no seed 1 of it
    assert "(seeds 1) for lakd-no-ramp" in capsys.readouterr().err
    put(tmp_path / "study", "lakd", 0, [1.0, 2.0])  # the same method in two folders: which is meant?
    assert curves.main(argv) == 2
    assert "more than one of the folders" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "does not exist"),
        (["{folder}", "--methods", "nd"], "no result JSON"),
        (["{folder}", "--epochs", "0"], "1-based"),
        (["{folder}", "--methods", "broken"], "no 'epochs' history"),
    ],
)
def test_bad_input_is_one_clear_error(curves, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    put(tmp_path, "lakd", 0, [10.0])
    (tmp_path / "broken-s0.json").write_text(json.dumps({"best_val_top1": 1.0}))
    argv = [a.format(missing=tmp_path / "nope", folder=tmp_path) for a in args]
    assert curves.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
