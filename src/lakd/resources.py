"""Files shipped inside the package, so that `lakd bench` and `lakd demo` work from an installed lakd too.

The protocol and method configs (``lakd/configs``, which the source checkout's ``configs/`` links to) and the
protocols' small weights-only teachers (``lakd/teachers``, linked from ``benchmarks/teachers/``). A path a config
names, such as ``benchmarks/teachers/cifar10_resnet56_e8.pt`` or ``configs/methods/kd.yaml``, is looked up in
the working folder first and then here.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
#: names the configs use for shipped files -> where they are inside the package
_PREFIXES = {"configs/": PACKAGE_ROOT / "configs", "benchmarks/teachers/": PACKAGE_ROOT / "teachers"}


def configs_dir() -> Path:
    return PACKAGE_ROOT / "configs"


def shipped(path: str | Path) -> Path | None:
    """The packaged copy of a relative ``configs/...`` or ``benchmarks/teachers/...`` path, if there is one."""
    text = Path(path).as_posix()
    for prefix, folder in _PREFIXES.items():
        if text.startswith(prefix):
            candidate = folder / text[len(prefix):]
            if candidate.is_file():
                return candidate
    return None


def locate(path: str | Path) -> Path:
    """``path`` as given when it exists (relative to the working folder), else its packaged copy, else as given."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return shipped(p) or p
