"""One exception type for every mistake a user can fix, so the CLI can print it once and exit 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LakdError(Exception):
    """A user-fixable problem: bad config value, missing file, mismatched checkpoint, ...

    The message says what is wrong, where, and what to do. The CLI prints it without a traceback.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
