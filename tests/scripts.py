"""Helpers the tests share: a script of ``benchmarks/`` (not a package) imported as a module, a small image folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(relative: str) -> ModuleType:
    """``benchmarks/<relative>`` (e.g. ``peer_comparison.py``) loaded as a fresh module."""
    path = BENCHMARKS / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_image_folder(root: Path, classes: int, counts: dict[str, int], side: int = 32, seed: int = 0) -> Path:
    """``root/<split>/c<k>/<i>.png`` of random pixels: ``counts[split]`` images per class in each split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root
