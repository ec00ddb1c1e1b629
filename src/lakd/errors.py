"""One exception type for every mistake a user can fix, so the CLI can print it once and exit 2."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


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
