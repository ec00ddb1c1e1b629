"""Where datasets live: CLI flag, then $LAKD_DATA, then a per-user cache dir."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_DATA = "LAKD_DATA"
ENV_CACHE = "LAKD_CACHE"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lakd`` (``~/.cache/lakd`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lakd"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Return ``(root, how it was chosen)`` — the flag wins over $LAKD_DATA, which wins over the cache dir."""
    if root:
        return Path(root).expanduser(), "--data-root / data.root"
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser(), f"${ENV_DATA}"
    return user_cache_dir() / "data", "default (no --data-root, no $LAKD_DATA)"


def decoded_cache_dir(root: Path) -> Path:
    """Where decoded uint8 arrays are cached: ``$LAKD_CACHE`` if set, else ``$XDG_CACHE_HOME/lakd/decoded/<hash of
    the data root>`` (``~/.cache/lakd/...``), so two roots never share a cache.

    Never the user's data folder unless they ask for it (``LAKD_CACHE=<that folder>``): a data set is the user's,
    often shared or backed up, and 185 MB of decoded CIFAR-10 does not belong in it. ``lakd data info`` says where.
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "decoded" / digest
