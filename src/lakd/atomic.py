"""Atomic file writes: temp file in the same folder, fsync, rename — never a torn file, whatever happens.

Every file lakd writes into a run or results folder goes through here. The rename replaces whatever sits at the
path — a planted symbolic link included — instead of writing through it, so no write follows a link out of its
folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.

    A crash or a full disk at any point leaves the old file (or none) and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions of a new file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a write or fsync error (a full disk) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def is_temp_file(name: str) -> bool:
    """A temp file of :func:`atomic_write` (``.NAME.xxxx.tmp``) or of the trainer's ``keep_previous``
    (``NAME.tmp``): what a process killed mid-write (SIGKILL, power loss) leaves behind."""
    return name.endswith(".tmp") and (name.startswith(".") or name.endswith(".prev.pt.tmp"))


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write`` of a UTF-8 text."""
    data = text.encode()
    atomic_write(Path(path), lambda f: f.write(data))


def read_json(path: Path, what: str) -> dict:
    """A JSON object file that this project wrote (a result, a summary, run.json): a torn or hand-broken one is one
    ``LakdError`` naming it and what to do, not a traceback."""
    import json

    from lakd.errors import LakdError

    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", "?")
        raise LakdError(f"{what} '{path}' is not readable JSON ({type(exc).__name__}: line {line}); it was torn or "
                        f"edited: delete it (a run's summary is rewritten by --resume, a result by "
                        "running its entry again)") from None
    if not isinstance(value, dict):
        raise LakdError(f"{what} '{path}' holds a {type(value).__name__}, not a JSON object; delete it")
    return value

