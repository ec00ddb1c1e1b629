"""Where datasets live: CLI flag, then $LAKD_DATA, then a per-user cache dir."""

from __future__ import annotations

import hashlib
import os
import stat
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


def _writable(path: Path) -> bool:
    """Writable by its permission bits *and* for us: root passes ``os.access`` even on folders marked
    read-only (as a shared dataset folder is), and must not litter them."""
    return bool(path.stat().st_mode & stat.S_IWUSR) and os.access(path, os.W_OK)


def decoded_cache_dir(root: Path) -> Path:
    """Where decoded uint8 arrays are cached: ``<root>/.lakd-cache`` if writable, else a user dir.

    Shared data folders are often read-only; then the cache goes to ``$LAKD_CACHE`` or
    ``~/.cache/lakd/decoded/<hash of root>`` so two roots never share a cache.
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    local = root / ".lakd-cache"
    if local.is_dir() and _writable(local):
        return local
    if root.is_dir() and _writable(root):
        return local
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "decoded" / digest
