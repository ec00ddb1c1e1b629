"""Keep freed host memory for the next training step instead of handing it back to the OS.

A training step allocates and frees the same tensors every step. glibc's malloc returns large freed blocks to the
OS (``munmap``, heap trimming) and the next step faults fresh pages back in, each one zeroed by the kernel; how
often varies from run to run with glibc's adaptive threshold. Keeping freed memory cut a LAKD run's page faults to
a third and made fp32 KD 12 % faster on a 2-core CPU (docs/studies/speed.md). It costs nothing but memory the process
has already used once: the resident size stays at its peak.

This is process-wide and cannot be undone, so the library never does it on import: ``lakd train`` / ``distill``
call it (``train.malloc``), and a user's own loop may call :func:`keep_freed_host_memory` itself.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, never from a fresh mmap (glibc's own ceiling for its adaptive
#: threshold, DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, so every glibc accepts it).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top is returned to the OS only beyond this.
TRIM_THRESHOLD = 1 << 30
#: Allocators that replace glibc's malloc when preloaded: their own settings apply, ours would not.
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
#: Environment variables through which a user already tuned glibc's malloc: theirs win.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


_applied: str | None = None  # what an earlier call in this process set (mallopt cannot be undone)


def keep_freed_host_memory(choice: str = "auto") -> str:
    """Apply ``train.malloc`` = ``choice`` (``auto`` | ``system``) and say what was done, for run.json.

    ``auto`` sets glibc's mmap and trim thresholds (``mallopt``) on Linux, unless another allocator is preloaded
    or the user set glibc's own variables; ``system`` leaves the C library as it is (or says that an earlier run in
    this process already changed it).
    """
    global _applied
    if _applied is not None:
        return f"{_applied}, set earlier in this process" if choice == "auto" else \
            f"{_applied}: set earlier in this process, train.malloc = system cannot undo it"
    if choice == "system":
        return "system (train.malloc = system)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"system (not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    preload = os.environ.get("LD_PRELOAD", "")
    other = next((name for name in OTHER_ALLOCATORS if name in preload), None)
    if other:
        return f"system ({other} preloaded)"
    user = [name for name in USER_SETTINGS if name in os.environ]
    if user:
        return f"system (set by the environment: {', '.join(user)})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD) == 1
    except (OSError, AttributeError) as exc:
        return f"system (mallopt unavailable: {exc})"
    if not done:
        return "system (glibc refused mallopt)"
    _applied = (f"glibc, freed memory kept (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
                f"{TRIM_THRESHOLD >> 30} GiB)")
    return _applied
