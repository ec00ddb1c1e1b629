"""Shared fixtures: tests run on synthetic data and tiny models; real-data smoke tests need ../shared/data."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAKD_TEST_SHARED_DATA", REPO.parent / "shared" / "data"))

# Several pytest-xdist workers share the cores: each of them, and each process a test starts, gets one thread.
# Two workers with two threads each on two cores would oversubscribe them, and OpenMP's barriers then make every
# step many times slower. One process alone uses up to two threads.
PARALLEL_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = 1 if PARALLEL_WORKERS > 1 else min(2, os.cpu_count() or 1)
if PARALLEL_WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most 4 (each holds its own torch: about 0.5 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep decoded-array caches and the default data root out of the user's home during tests."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("LAKD_DATA", raising=False)
    monkeypatch.delenv("LAKD_CACHE", raising=False)
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10" / "train.npz").is_file():
        pytest.skip(f"real CIFAR data not found at {SHARED_DATA}")
    return SHARED_DATA


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server over ``tmp_path/'served'``; ``server.hits`` lists the paths requested."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")  # never send 127.0.0.1 through a proxy configured on the machine
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_CountingHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.hits = []  # type: ignore[attr-defined]
    httpd.served = served  # type: ignore[attr-defined]
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
