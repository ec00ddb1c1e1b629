"""One exception type for every mistake a user can fix, so the CLI can print it once and exit 2."""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable
from pathlib import Path


class LakdError(Exception):
    """A user-fixable problem: bad config value, missing file, mismatched checkpoint, ...

    The message says what is wrong, where, and what to do. The CLI prints it without a traceback.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict = 2, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = 60, 60, 40
    return r


_BOUNDED = _bounded_repr()


def short_repr(value: object) -> str:
    """``repr`` bounded in depth, length and size: what an error message may echo of user input.

    A YAML alias bomb is a few hundred bytes whose full ``repr`` is gigabytes; this never expands more than a
    few levels and items, and never returns more than ~100 characters.
    """
    text = _BOUNDED.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message without terminal colour codes, bounded; its type name when
    the message is empty (an ``EOFError()`` from a 0-byte file)."""
    text = _TERMINAL_CODES.sub("", str(exc))
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return (line or type(exc).__name__)[:limit]


def refused_load(exc: BaseException, path: str | Path | None = None) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words: torch's own advice for a refused pickle (to
    load it with ``weights_only=False``) is exactly what must not be done with an untrusted file. With ``path``,
    bytes that are neither torch.save's zip archive nor a pickle are called what they are."""
    if path is not None and not _looks_like_torch_file(path):
        return ("it is not a PyTorch file: neither torch.save's zip archive nor a pickle (wrong file, or "
                "overwritten)")
    if "Weights only load failed" in str(exc):
        return ("it holds pickled Python objects, not only tensors and plain containers; lakd refuses to load "
                "those, since loading them can run code")
    if isinstance(exc, EOFError):
        return "the file ends early (EOFError): it is empty or cut short"
    line = first_line(exc)
    return line if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"


def _looks_like_torch_file(path: str | Path) -> bool:
    """torch.save writes a zip archive (``PK``); the legacy format and plain pickles start with a protocol byte."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # the load's own error says why
    if len(head) < 2:
        return True  # empty or cut short: the load's own error (it ends early) says so
    return head.startswith(b"PK\x03\x04") or (head[0] == 0x80 and 2 <= head[1] <= 5)

