"""The run folder (lakd.runfolder): locked before it is judged, judged under the lock, a resume judged against
what its checkpoint records, and nothing left behind by a run refused on bad input (issue 33's first defects)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lakd.cli import main
from lakd.errors import LakdError
from lakd.runfolder import LOCK, lock_folder

ARGS = ["train", "--model", "resnet8", "--dataset", "synthetic", "--epochs", "1", "--no-progress",
        "--precision", "fp32", "data.synthetic_size=64", "data.val_size=16", "data.batch_size=16"]


def test_a_run_that_finishes_while_another_loads_its_data_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run B judges an empty folder, then loads its data; meanwhile run A would finish in the same folder. With
    the lock taken before the judgement, A cannot start there while B owns it, and B's judgement stands."""
    import lakd.data as data

    out = tmp_path / "run"
    real_load = data.load_splits
    second: list[int] = []

    def load_while_another_runs(*args: object, **kwargs: object) -> object:
        if not second:  # only in B: A tries the same folder while B loads
            second.append(main([*ARGS, "--out", str(out)]))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(data, "load_splits", load_while_another_runs)
    assert main([*ARGS, "--out", str(out)]) == 0  # B
    assert second == [2] and "in use by another lakd process" in capsys.readouterr().err  # A was refused
    assert (out / "summary.json").is_file()


def test_the_folder_is_judged_under_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder another process holds is refused before anything is read or written; once free, a finished run
    there is refused without --force."""
    out = tmp_path / "run"
    out.mkdir()
    fd = lock_folder(out)
    try:
        assert main([*ARGS, "--out", str(out)]) == 2
        assert "in use by another lakd process" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [LOCK]
    finally:
        os.close(fd)
    assert main([*ARGS, "--out", str(out)]) == 0
    assert main([*ARGS, "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_a_refused_run_leaves_no_folder_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "run"
    assert main([*ARGS, "--out", str(out), "--model", "resnet9000"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("edit", ["delete", "edit"])
def test_a_resume_is_judged_against_what_its_checkpoint_records(
    edit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting or editing RUN/config.yaml does not turn the resume check off: the checkpoint's own record of
    the settings is what a resume must match."""
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    config = out / "config.yaml"
    if edit == "delete":
        config.unlink()
    else:
        edited = yaml.safe_load(config.read_text())
        edited["optim"]["lr"] = 0.5
        config.write_text(yaml.safe_dump(edited))
    assert main([*ARGS, "--out", str(out), "--resume", "--lr", "0.5", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr (0.1 -> 0.5)" in err and "its checkpoint" in err
    # the same settings resume (the epochs may grow), with the recorded config as the base
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "train.epochs=2"]) == 0
    assert yaml.safe_load(config.read_text())["optim"]["lr"] == 0.1


def test_temp_files_left_by_a_killed_writer_are_cleared_under_the_lock(tmp_path: Path) -> None:
    """SIGKILL between a temp file's creation and its rename leaves it behind (issue 33): the next run that owns
    the folder removes it (the lock proves no writer is running), and a folder holding only such files is empty."""
    from lakd.runfolder import RunFolder

    out = tmp_path / "run"
    out.mkdir()
    for name in (".last.pt.k2j3.tmp", "last.prev.pt.tmp", ".metrics.jsonl.x.tmp"):
        (out / name).write_bytes(b"torn")
    (out / "notes.tmp").write_text("the user's own file")  # not ours: kept, and the folder is then not empty
    with pytest.raises(LakdError, match="already exists and is not empty"):
        RunFolder(out, resume=False, force=False).open()
    (out / "notes.tmp").unlink()
    folder = RunFolder(out, resume=False, force=False)
    folder.open()
    folder.close()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_full_disk_error_names_the_file(tmp_path: Path) -> None:
    import errno

    from lakd.atomic import atomic_write

    def full(_f: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "run.json", full)
    assert info.value.filename == str(tmp_path / "run.json") and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
