"""torchrun data parallelism on CPU (gloo): 2 processes train the same weights as 1 process with the same global
batch — for KD (one backward) and for LAKD with ``backward: local`` (one backward per module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lakd.cli import main
from lakd.engine import load_checkpoint

COMMON = ["--epochs", "2", "--no-progress", "--precision", "fp32", "data.val_size=20", "data.batch_size=32",
          "train.channels_last=false", "train.eval_test=false", "train.threads=1"]
# One intra-op thread in the single process too, as in each torchrun rank: torch splits some float32 reductions
# (NDAM's channel sum) across threads, which reorders the sum (~1e-7 per op) and, over a few steps, moved weights
# by more than the 1e-5 this test allows; with equal thread counts the runs agree.


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-noise images as an image folder. Noise keeps the comparison well conditioned: on smooth synthetic
    patterns a freshly initialised net's BatchNorm gradients change by ~1e-3 (relative) under a mere reordering
    of the batch, which would hide a real bug below any usable tolerance."""
    from PIL import Image

    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 22), ("test", 2)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def teacher(noise_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    assert main(["train", "--model", "resnet14", "--out", str(out), "--dataset", "imagefolder",
                 f"data.path={noise_folder}", *COMMON]) == 0
    return out / "best.pt"


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "lakd", *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("method", ["lakd", "kd"])
def test_two_processes_equal_one_with_the_same_global_batch(
    teacher: Path, noise_folder: Path, tmp_path: Path, method: str
) -> None:
    args = ["distill", "--method", method, "--teacher", str(teacher), "--student", "resnet8", "--dataset",
            "imagefolder", f"data.path={noise_folder}", *COMMON]
    if method == "lakd":  # SDM for the whole run: the per-module backward, the hard case for gradient averaging
        args.append("distill.params.detach_until=1.0")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main([*args, "--out", str(single)]) == 0
    proc = torchrun([*args, "--out", str(ddp)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("distilling (") == 1  # only rank 0 prints
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(ddp / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    for key in a["task"]:  # projectors / heads of the method too
        torch.testing.assert_close(b["task"][key], a["task"][key], rtol=1e-5, atol=1e-6, msg=key)
    rows_a = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["train_top1"] == pytest.approx(ra["train_top1"])
    assert json.loads((ddp / "run.json").read_text())["environment"]["world_size"] == 2


def test_global_batch_must_divide(teacher: Path, noise_folder: Path, tmp_path: Path) -> None:
    proc = torchrun(["distill", "--method", "kd", "--teacher", str(teacher), "--student", "resnet8", "--dataset",
                     "imagefolder", f"data.path={noise_folder}", *COMMON, "data.batch_size=33",
                     "--out", str(tmp_path / "x")])
    assert proc.returncode != 0 and "must divide evenly over 2 processes" in proc.stderr
    assert not (tmp_path / "x").exists()
