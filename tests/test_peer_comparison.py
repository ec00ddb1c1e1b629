"""benchmarks/peer_comparison.py: the peer-style per-sample data path and loop, on tiny synthetic data."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from lakd.models import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_comparison.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_comparison", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arrays(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_per_sample_dataset_normalises_and_only_flips_without_padding() -> None:
    pc = _load()
    x, y = _arrays()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = pc.PerSampleCIFAR(x, y, mean, std, padding=0)
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == int(y[3])
    ref = (torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std)[:, None, None]
    assert torch.allclose(img, ref, atol=1e-5) or torch.allclose(img, ref.flip(2), atol=1e-5)
    assert pc.PerSampleCIFAR(x, y, mean, std)[0][0].shape == (3, 32, 32)  # pad-4 crop keeps 32x32


def test_plain_loop_runs_limited_steps_and_reports() -> None:
    pc = _load()
    x, y = _arrays()
    torch.manual_seed(0)
    ds = pc.PerSampleCIFAR(x, y, (0.5,) * 3, (0.25,) * 3)
    out = pc.run_plain(ds, build_model("resnet8", 10), build_model("resnet8", 10), workers=0, steps=2, batch_size=4)
    assert out["steps"] == 2 and out["images"] == 8 and out["img_per_s"] > 0
    assert out["precision"] == "fp32" and np.isfinite(out["train_loss"])
    ways = {"lakd_kd": {"img_per_s": 300.0}, "lakd_lakd": {"img_per_s": 285.0}, "plain": out | {"img_per_s": 100.0},
            "torchdistill": pc.torchdistill_status()}
    ratios = pc.ratios(ways)
    assert ratios == {"lakd_kd_over_plain": 3.0, "lakd_lakd_over_lakd_kd": 0.95}
    assert ways["torchdistill"]["status"] == "not run" and ways["torchdistill"]["reason"]
