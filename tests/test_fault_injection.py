"""Fault injection on every write a run makes: a full disk (ENOSPC) or a read-only file system (EROFS) at each
write, and a kill between any two writes. Every write goes through lakd.atomic, whose file ``fsync`` and
``os.replace`` are where the faults are injected, so each case is the real code path of that write.

Promised (README "What is promised about files"): one ``lakd: error`` line and exit 2, never a traceback; no
temp file left; every file in the run folder complete and readable; and after a kill, ``--resume`` (or, when no
checkpoint was written yet, a clear refusal and ``--force``) ends with the uninterrupted run's metrics.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

import lakd.atomic
from lakd.cli import main

ARGS = ["train", "--model", "resnet8", "--dataset", "synthetic", "--epochs", "2", "--no-progress", "--precision",
        "fp32", "data.synthetic_size=96", "data.val_size=32", "data.batch_size=32", "train.threads=1"]
METRICS = ("train_loss", "train_top1", "val_top1", "test_top1", "lr")


class Killed(BaseException):
    """Stands for SIGKILL between two writes: nothing after it runs (not an Exception, so nothing catches it)."""


def assert_folder_is_whole(out: Path) -> None:
    """No temp file, and every file a run writes is complete and readable."""
    if not out.exists():
        return
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for p in out.iterdir():
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name == "metrics.jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)


def rows(out: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """The uninterrupted run, how many files it writes (file fsyncs) and how many renames (os.replace: the
    writes plus keeping the previous checkpoint as last.prev.pt)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    real_replace, real_fsync, count = os.replace, os.fsync, {"replace": 0, "write": 0}

    def counting_replace(src: str, dst: str) -> None:
        count["replace"] += 1
        real_replace(src, dst)

    def counting_fsync(fd: int) -> None:
        count["write"] += stat.S_ISREG(os.fstat(fd).st_mode)
        real_fsync(fd)

    lakd.atomic.os.replace, lakd.atomic.os.fsync = counting_replace, counting_fsync  # type: ignore[assignment]
    try:
        assert main([*ARGS, "--out", str(out)]) == 0
    finally:
        lakd.atomic.os.replace, lakd.atomic.os.fsync = real_replace, real_fsync  # type: ignore[assignment]
    assert count["write"] >= 10  # config, run.json, per epoch metrics x2 + checkpoints, summary
    return out, count["write"], count["replace"]


def _fail_nth_file_fsync(monkeypatch: pytest.MonkeyPatch, n: int, code: int) -> None:
    real_fsync, count = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            count["n"] += 1
            if count["n"] == n:
                raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(lakd.atomic.os, "fsync", fsync)


def test_a_full_disk_at_every_write(reference: tuple[Path, int, int], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, writes, _ = reference
    for n in range(1, writes + 1):
        out = tmp_path / f"run{n}"
        with monkeypatch.context() as m:
            _fail_nth_file_fsync(m, n, errno.ENOSPC)
            rc = main([*ARGS, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, (n, err)
        lines = [line for line in err.strip().splitlines() if line.startswith("lakd: error")]
        assert len(lines) == 1 and "No space left on device" in lines[0], (n, err)
        assert "Traceback" not in err
        assert_folder_is_whole(out)


@pytest.mark.parametrize("at", ["first", "last"])
def test_a_read_only_file_system(reference: tuple[Path, int, int], tmp_path: Path, at: str,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, writes, _ = reference
    out = tmp_path / "run"
    _fail_nth_file_fsync(monkeypatch, 1 if at == "first" else writes, errno.EROFS)
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err
    assert_folder_is_whole(out)


def test_killed_between_any_two_writes_then_resumed(reference: tuple[Path, int, int], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ref, _, renames = reference
    real_replace = os.replace
    for n in range(1, renames):
        out = tmp_path / f"run{n}"

        def replace_then_die(src: str, dst: str, count: dict = {"n": 0}, n: int = n) -> None:  # noqa: B006
            real_replace(src, dst)
            count["n"] += 1
            if count["n"] == n:
                raise Killed

        lakd.atomic.os.replace = replace_then_die  # type: ignore[assignment]
        try:
            with pytest.raises(Killed):
                main([*ARGS, "--out", str(out)])
        finally:
            lakd.atomic.os.replace = real_replace  # type: ignore[assignment]
        assert_folder_is_whole(out)
        capsys.readouterr()
        rc = main([*ARGS, "--out", str(out), "--resume"])
        if not (out / "last.pt").exists():  # killed before the first checkpoint: nothing to resume, say so
            assert rc == 2 and "--force" in capsys.readouterr().err
            rc = main([*ARGS, "--out", str(out), "--force"])
        assert rc == 0, (n, capsys.readouterr().err)
        assert rows(out) == rows(ref), n


def _commands(ref: Path, tmp: Path) -> dict[str, list[str]]:
    return {"report": ["report", str(ref), "--out", str(tmp / "curves.png")],
            "export": ["export", "--ckpt", str(ref / "best.pt"), "--out", str(tmp / "student.safetensors")],
            "explain": ["explain", "--teacher", str(ref / "best.pt"), "--student", str(ref / "last.pt"),
                        "--images", "2", "--out", str(tmp / "explain.png")]}


@pytest.mark.parametrize("command", ["report", "export", "explain"])
def test_a_full_disk_at_every_write_of_the_other_commands(reference: tuple[Path, int, int], tmp_path: Path,
                                                          command: str, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ref = reference[0]
    before = {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file() and p.name != ".lock"}
    args = _commands(ref, tmp_path)[command]
    real_fsync, count = os.fsync, {"n": 0}

    def counting(fd: int) -> None:
        count["n"] += stat.S_ISREG(os.fstat(fd).st_mode)
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(lakd.atomic.os, "fsync", counting)
        assert main([*args, *(["--force"] if command == "export" else [])]) == 0, capsys.readouterr().err
    writes = count["n"]
    assert writes >= 1
    for n in range(1, writes + 1):
        for p in tmp_path.iterdir():  # start from nothing written
            p.unlink()
        with monkeypatch.context() as m:
            _fail_nth_file_fsync(m, n, errno.ENOSPC)
            rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and "No space left on device" in err and "Traceback" not in err, (command, n, err)
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert_folder_is_whole(ref)
        assert {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file() and p.name != ".lock"} == before
