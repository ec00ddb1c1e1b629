"""train.malloc: glibc's thresholds set once, through mallopt, only where they are glibc's and the user's own."""

from __future__ import annotations

import pytest

from lakd.engine import host_memory


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for name in ("LD_PRELOAD", *host_memory.USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_auto_sets_both_thresholds_once(libc: FakeLibc) -> None:
    said = host_memory.keep_freed_host_memory("auto")
    assert libc.calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert said.startswith("glibc, freed memory kept (mmap threshold 32 MiB, trim threshold 1 GiB")
    # a later run in the same process: nothing called again, and `system` is told it cannot undo it
    assert "set earlier in this process" in host_memory.keep_freed_host_memory("auto")
    assert "cannot undo" in host_memory.keep_freed_host_memory("system")
    assert len(libc.calls) == 2


def test_system_leaves_malloc_alone(libc: FakeLibc) -> None:
    assert host_memory.keep_freed_host_memory("system") == "system (train.malloc = system)"
    assert libc.calls == []


@pytest.mark.parametrize(("name", "value", "said"), [
    ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "system (jemalloc preloaded)"),
    ("LD_PRELOAD", "libtcmalloc_minimal.so.4", "system (tcmalloc preloaded)"),
    ("MALLOC_TRIM_THRESHOLD_", "0", "system (set by the environment: MALLOC_TRIM_THRESHOLD_)"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=0", "system (set by the environment: GLIBC_TUNABLES)"),
])
def test_another_allocator_or_the_users_settings_win(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    monkeypatch.setenv(name, value)
    assert host_memory.keep_freed_host_memory("auto") == said
    assert libc.calls == []


def test_not_glibc_or_refused(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    libc.answer = 0
    assert host_memory.keep_freed_host_memory("auto") == "system (glibc refused mallopt)"
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory.keep_freed_host_memory("auto").startswith("system (not glibc")
    assert len(libc.calls) == 1  # the refused attempt only: nothing is tried off glibc
