"""``torch.compile`` where it measurably pays on this kind of machine, and a safe fallback where it fails.

What lakd compiles (``distill.compile``): the frozen teacher's whole forward (lakd.models.frozen) and a method's
loss arithmetic (LAKD's NDAM and feature losses: many small ops that inductor fuses into a few). It never
compiles the student: compiling its training step measured no faster on the CPU (docs/studies/speed.md).

A compiled function is checked once against the eager one on its first call (loose tolerance: it catches a
wrong program, not rounding), and any failure to compile falls back to eager with one note: a run never stops
because a compiler is missing or a graph does not compile.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

import torch

#: ``auto`` compiles only for at least this many training steps: compiling a ResNet-56 teacher and LAKD's losses
#: takes 10-30 s on 2 CPU cores and saves 15-30 ms a step, so it is repaid after about a thousand steps.
COMPILE_MIN_STEPS = 1000
COMPILE_CHOICES = ("auto", "true", "false")


def can_compile(device: torch.device) -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) can plausibly run here, and why not."""
    if sys.platform == "win32":
        return False, "torch.compile is not used on Windows"
    if device.type == "cpu":
        if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return False, "no C++ compiler on PATH (inductor needs one on the CPU)"
        return True, ""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed"
        return True, ""
    return False, f"torch.compile is not used on {device.type}"


def resolve_compile(choice: str, device: torch.device, steps: int) -> tuple[bool, str]:
    """``(compile?, why)`` for ``distill.compile`` = ``choice`` on ``device`` for a run of ``steps`` steps."""
    possible, why_not = can_compile(device)
    if choice == "false":
        return False, "distill.compile = false"
    if not possible:
        return False, why_not
    if choice == "auto" and steps < COMPILE_MIN_STEPS:
        return False, f"a short run ({steps} steps < {COMPILE_MIN_STEPS}) does not repay compilation"
    return True, ""


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for item in out for t in _tensors(item)]
    return []


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not b.numel():
        return True
    scale = b.detach().float().abs().max().item()
    return bool(((a.detach().float() - b.detach().float()).abs().max() <= 0.05 * (1.0 + scale)).item())


class Compiled:
    """``fn`` compiled (``torch.compile(dynamic=False)``, inductor ``options``), or ``fn`` itself after a failure.

    The first call also runs ``fn`` eagerly and compares every output tensor; a compiler error or a disagreement
    switches to ``fn`` for good, prints one note and keeps it in ``note``.
    """

    def __init__(self, fn: Callable[..., Any], what: str, options: dict[str, Any] | None = None) -> None:
        self.fn, self.what = fn, what
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=False, options=options or {})
        self.checked = False
        self.note = ""

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: say so once, run eagerly
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return self._give_up(f"compiling {self.what} failed ({type(exc).__name__}: {reason})", args, kwargs)
        if not self.checked:
            self.checked = True
            with torch.no_grad():
                eager = self.fn(*args, **kwargs)
            got, want = _tensors(out), _tensors(eager)
            if len(got) != len(want) or not all(_agree(a, b) for a, b in zip(got, want, strict=True)):
                return self._give_up(f"compiled {self.what} disagreed with eager", args, kwargs)
        return out

    def _give_up(self, why: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        self.compiled = None
        self.note = f"{why}; running it eagerly"
        print(f"lakd: note: {self.note}", file=sys.stderr)
        return self.fn(*args, **kwargs)
