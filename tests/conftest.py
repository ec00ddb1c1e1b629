"""Shared fixtures: tests run on synthetic data and tiny models; real-data smoke tests need ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAKD_TEST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep decoded-array caches and the default data root out of the user's home during tests."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("LAKD_DATA", raising=False)
    monkeypatch.delenv("LAKD_CACHE", raising=False)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10" / "train.npz").is_file():
        pytest.skip(f"real CIFAR data not found at {SHARED_DATA}")
    return SHARED_DATA
