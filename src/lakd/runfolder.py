"""A run folder, owned by one process from the start of a run to its end: its lock, its judgement, the settings a
resume continues with, and its record files (config.yaml, run.json, summary.json), written atomically.

The order is what makes it safe: the folder is locked *before* it is judged (empty, resumable, or to be cleared
with ``--force``), and the judgement is made under the lock, so a run that finishes in the folder while another
is loading its data can never be silently replaced by it. A resume is judged against what the checkpoint itself
records (its ``config``), not against ``config.yaml``, which a user may have edited or deleted. A folder this
process created and never wrote to is removed again when the run stops before writing (bad input found late).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

from lakd.errors import LakdError

LOCK = ".lock"
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.yaml", "run.json",
             "summary.json")
# Keys a resumed run may change: they do not change what is computed, only how it is shown or run.
RESUME_MAY_CHANGE = ("train.progress", "train.threads", "train.malloc", "train.tensorboard", "data.workers",
                     "data.root", "out", "distill.compile")  # how the teacher and the losses run, not what they compute


def check_out_arguments(out: Path, resume: bool, force: bool) -> None:
    """The checks that need no lock (nothing on disk can change their answer): run before any work."""
    if resume and force:
        raise LakdError("--resume and --force contradict each other: pick one")
    if out.exists() and not out.is_dir():
        raise LakdError(f"--out '{out}' exists and is not a folder")


def lock_folder(out: Path) -> int:
    """An exclusive ``flock`` on ``out/.lock`` (released by the OS on any exit), holding this process's pid.

    A second run (train, distill, bench's child, --resume or --force) on the same folder gets a ``LakdError``
    naming the owner's pid instead of interleaving its metrics and checkpoints with the first one's.
    """
    path = out / LOCK
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise LakdError(f"cannot lock run folder '{out}': {exc.strerror} ({path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LakdError(f"run folder '{out}' is in use by another lakd process (pid {owner}); wait for it to "
                        "finish or stop it (it checkpoints on SIGTERM), or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class RunFolder:
    """``out`` owned by this process: ``open()`` locks it, then judges it; ``close()`` releases it.

    ``owner=False`` (the other ranks of a torchrun job) neither locks nor judges: rank 0 owns the folder.
    """

    def __init__(self, out: Path, resume: bool, force: bool, owner: bool = True) -> None:
        self.out, self.resume, self.force, self.owner = Path(out), resume, force, owner
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        check_out_arguments(self.out, self.resume, self.force)
        if not self.owner:
            return
        self._created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakdError(f"cannot create run folder '{self.out}': {exc.strerror}") from None
        self._fd = lock_folder(self.out)
        try:
            self._judge()
        except BaseException:
            self.close()
            raise

    def _judge(self) -> None:
        """Under the lock: a resume needs a checkpoint; a new run needs an empty folder, or ``--force``. Temp files
        a killed writer left (the lock proves no writer is running) are removed first."""
        from lakd.atomic import is_temp_file

        for path in self.out.iterdir():
            if is_temp_file(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
        existing = [p for p in self.out.iterdir() if p.name != LOCK]
        if self.resume:
            if not (self.out / "last.pt").is_file() and not (self.out / "last.prev.pt").is_file():
                started = " (the run stopped before its first checkpoint)" if existing else ""
                raise LakdError(f"--resume: no '{self.out / 'last.pt'}' to resume from{started}; start the run "
                                "again with --force (or a new --out)")
            return
        if existing and not self.force:
            raise LakdError(f"run folder '{self.out}' already exists and is not empty; use --resume to continue "
                            "it, --force to start over in it, or another --out")

    def clear(self) -> None:
        """``--force``: the previous run's files go, when the new run is about to write its first."""
        for name in RUN_FILES:
            (self.out / name).unlink(missing_ok=True)

    def write_record(self, config_yaml: str, run_info: dict[str, Any]) -> None:
        """``config.yaml`` and ``run.json``, atomically (on --resume too: only keys ``check_resume_config`` allows
        can differ, and a later resume compares with these)."""
        import json

        from lakd.atomic import atomic_write_text

        atomic_write_text(self.out / "config.yaml", config_yaml)
        atomic_write_text(self.out / "run.json", json.dumps(run_info, indent=2))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json``, atomically: a torn summary would block ``report`` and ``bench``."""
        import json

        from lakd.atomic import atomic_write_text

        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))

    def recorded_settings(self) -> tuple[dict[str, Any], str]:
        """``(configuration, where it was read)`` of the run to resume: as its checkpoint records it (``last.pt``,
        else ``last.prev.pt``), or, for a checkpoint from before checkpoints recorded it, its ``config.yaml``."""
        from lakd.checkpoint import load_checkpoint
        from lakd.config import load_yaml

        for name in ("last.pt", "last.prev.pt"):
            path = self.out / name
            if not path.is_file():
                continue
            try:
                config = load_checkpoint(path).get("config")
            except LakdError:
                continue  # torn: the trainer falls back to last.prev.pt, and so does this
            if isinstance(config, dict):
                return config, f"its checkpoint '{path}'"
        if (self.out / "config.yaml").is_file():
            return load_yaml(str(self.out / "config.yaml")), f"'{self.out / 'config.yaml'}'"
        raise LakdError(f"--resume: '{self.out / 'last.pt'}' records no settings to continue with; start the run "
                        "again with --force (or a new --out)")

    def close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._created and [p.name for p in self.out.iterdir()] == [LOCK]:  # made by this run, never written
            (self.out / LOCK).unlink(missing_ok=True)
            try:
                self.out.rmdir()
            except OSError:
                pass


def check_resume_config(cfg: Any, recorded: dict[str, Any], where: str) -> None:
    """``--resume`` continues a run exactly as configured: a key that differs from what the run recorded
    (another lr, seed, method parameter, or an edited config file) is refused, naming the keys."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("params", "per_method"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    before, now = flat(recorded), flat(cfg.to_dict())
    defaults = flat(type(cfg)().to_dict())
    # a key the run's lakd version did not have yet is no difference at its default (which does what it did)
    new_keys = {k for k in now if k not in before and k in defaults and now[k] == defaults[k]}
    changed = [k for k in sorted(set(before) | set(now))
               if k not in RESUME_MAY_CHANGE and k not in new_keys and before.get(k) != now.get(k)]
    if "train.epochs" in changed:  # extending (or shortening) a run is allowed, and said
        changed.remove("train.epochs")
        print(f"lakd: note: --resume with train.epochs {before.get('train.epochs')} -> {now.get('train.epochs')}: "
              "the remaining epochs follow the new schedule, so the run is not the same as an uninterrupted one "
              "of the new length", file=sys.stderr)
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed[:5])
        raise LakdError(f"--resume continues the run as it was configured, but {len(changed)} setting(s) differ "
                        f"from what {where} records: {shown}{', ...' if len(changed) > 5 else ''}. Resume with the "
                        "same settings, or start a new run (--out elsewhere, or --force) to change them")
