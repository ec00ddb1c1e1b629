"""Peer comparison in one run: one KD epoch (resnet56 -> resnet20, CIFAR-10, batch 128), timed three ways.

(a) lakd itself: ``lakd distill`` (KD, and LAKD for the LAKD/KD ratio) in a subprocess, read from metrics.jsonl.
(b) plain PyTorch the way mdistiller / RepDistiller train: a Dataset returning one PIL-augmented sample at a
    time, ``DataLoader(batch_size=128, shuffle=True, num_workers=2)`` (mdistiller's default), fp32, NCHW.
(c) torchdistill from PyPI, only if it imports on this torch; otherwise the reason is recorded instead.

Same models (lakd.models), same teacher weights, same 45,000 training images, same torch thread count; the
ways run one after another. Every step is timed (no warm-up excluded, as lakd's own ``img_per_s``): from the
start of the epoch's iteration to the last optimizer step, so worker start-up counts for (b) as it does in the
peers' epochs. Only the training loop and the data path differ.

Run:  python benchmarks/peer_comparison.py [--steps N] [--data-root ../shared/data] [--workers 2]
          [--out benchmarks/results/peer_comparison.json] [--ways lakd_kd,lakd_lakd,plain]
``--steps N`` cuts every way to N steps (smoke runs; such numbers say nothing about speed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lakd.cli import environment_info
from lakd.data import load_splits
from lakd.engine import load_checkpoint
from lakd.engine.checkpoint import checkpoint_meta
from lakd.models import build_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO / "benchmarks" / "teachers" / "cifar10_resnet56_e8.pt"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "peer_comparison.json"
BATCH = 128
VAL_SIZE = 5000
SPLIT_SEED = 0
WAYS = ("lakd_kd", "lakd_lakd", "plain")
TARGETS = {"lakd_kd_over_plain": 2.0, "lakd_lakd_over_lakd_kd": 0.9}

# Why (c) is not run here, as found on this machine (pip 23.2.1 against PyPI, torch 2.13.0+cpu, no torchvision).
TORCHDISTILL_FINDING = (
    "torchdistill 1.1.5 (PyPI wheel METADATA) has Requires-Dist torch>=2.12.0 and torchvision>=0.27.0. "
    "Unpinned, `pip install --dry-run torchdistill` resolves torchvision 0.29.1 -> torch 2.14.1 plus ~20 nvidia-* "
    "CUDA 13 wheels: a second, multi-GB torch. Pinning torchvision==0.28.0 (Requires-Dist torch==2.13.0, which "
    "the installed 2.13.0+cpu satisfies) avoids that, but PyPI's torchvision wheel is a CUDA build: its _C.so "
    "links libc10_cuda.so / libtorch_cuda.so, absent from a +cpu torch, so `import torchvision` fails with "
    "'RuntimeError: operator torchvision::nms does not exist', and torchdistill.core imports torchvision "
    "(core/interfaces/post_epoch_proc.py -> torchdistill.models). The matching +cpu torchvision wheel is only on "
    "download.pytorch.org, which is not reachable here. So torchdistill cannot run without a second torch."
)


# -- (a) lakd ----------------------------------------------------------------------------------------------
def run_lakd(method: str, data_root: Path, teacher: Path, steps: int | None) -> dict[str, Any]:
    """One epoch of ``lakd distill`` in its own process (the real trainer, its auto precision/memory format)."""
    with tempfile.TemporaryDirectory(prefix=f"peer-{method}-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lakd", "distill", "-c", "configs/cifar10_cpu.yaml",
               "-c", f"configs/methods/{method}.yaml", "--teacher", str(teacher), "--data-root", str(data_root),
               "--batch-size", str(BATCH), "--epochs", "1", "--out", str(out), "--no-progress",
               f"data.val_size={VAL_SIZE}", f"data.split_seed={SPLIT_SEED}",
               "train.eval_test=false", "data.test_limit=500"]  # the end-of-epoch eval is untimed: keep it small
        if steps:
            cmd.append(f"data.train_limit={steps * BATCH}")  # drop_last batches: exactly `steps` steps
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"lakd distill ({method}) failed with exit {proc.returncode}:\n{proc.stderr[-2000:]}")
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        env = json.loads((out / "run.json").read_text())["environment"]
    images = round(row["img_per_s"] * row["train_time_s"])
    device = env.get("device", "")  # e.g. "cpu, fp32, channels_last"
    parts = [p.strip() for p in device.split(",")]
    return {"what": f"`lakd distill` {method} (real trainer, subprocess)", "img_per_s": row["img_per_s"],
            "steps": images // BATCH, "images": images, "train_s": row["train_time_s"], "wall_s": wall,
            "precision": parts[1] if len(parts) > 1 else None, "memory_format": parts[2] if len(parts) > 2 else None,
            "torch_threads": env.get("torch_threads"), "loadavg_1m_before": load, "train_loss": row["train_loss"],
            "command": " ".join(["lakd", *cmd[3:]])}


# -- (b) plain PyTorch, peer style -------------------------------------------------------------------------
class PerSampleCIFAR(Dataset):
    """One image per ``__getitem__`` through PIL, as torchvision's CIFAR dataset + transforms do in the peers:
    pad-4 random crop, horizontal flip, to-tensor, normalise. Kept here since torchvision is not installed."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                 padding: int = 4) -> None:
        self.x, self.y, self.padding = x, y.astype(np.int64), padding
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.x[index])
        w, h = img.size
        p = self.padding
        canvas = Image.new(img.mode, (w + 2 * p, h + 2 * p))  # zero fill, like RandomCrop(padding=4)
        canvas.paste(img, (p, p))
        top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        img = canvas.crop((left, top, left + w, top + h))
        if float(torch.rand(1)) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)
        return (t - self.mean) / self.std, int(self.y[index])


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, t: float = 4.0) -> torch.Tensor:
    """0.1*CE + 0.9*T^2*KL(teacher || student) at temperature T: the peers' CIFAR KD recipe."""
    kl = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    return 0.1 * F.cross_entropy(student, y) + 0.9 * t * t * kl


def run_plain(dataset: Dataset, teacher: torch.nn.Module, student: torch.nn.Module, workers: int,
              steps: int | None, batch_size: int = BATCH) -> dict[str, Any]:
    """A peer-style KD epoch: fp32, NCHW, teacher in eval under no_grad, per-step loss/accuracy bookkeeping."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    teacher.eval()
    student.train()
    total = len(loader) if steps is None else min(steps, len(loader))
    images = correct = done = 0
    loss_sum = 0.0
    load = os.getloadavg()[0]
    start = time.perf_counter()
    for x, y in loader:
        with torch.no_grad():
            t_logits, _ = teacher(x)
        s_logits, _ = student(x)
        loss = kd_loss(s_logits, t_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        correct += int((s_logits.argmax(1) == y).sum())
        images += len(y)
        done += 1
        if done >= total:
            break
    elapsed = time.perf_counter() - start
    return {"what": f"plain PyTorch, per-sample PIL Dataset + DataLoader(num_workers={workers})",
            "img_per_s": images / max(elapsed, 1e-9), "steps": done, "images": images, "train_s": elapsed,
            "precision": "fp32", "memory_format": "contiguous (NCHW)", "torch_threads": torch.get_num_threads(),
            "num_workers": workers, "loadavg_1m_before": load, "train_loss": loss_sum / max(done, 1),
            "train_top1": 100.0 * correct / max(images, 1)}


def plain_way(data_root: Path, teacher_path: Path, workers: int, steps: int | None) -> dict[str, Any]:
    """Build (b)'s data and models from the same split and checkpoint lakd uses, then time its epoch."""
    start = time.perf_counter()
    splits = load_splits("cifar10", data_root, val_size=VAL_SIZE, split_seed=SPLIT_SEED)
    ckpt = load_checkpoint(teacher_path)
    meta = checkpoint_meta(ckpt, teacher_path)
    teacher = build_model(meta["arch"], meta["num_classes"])
    teacher.load_state_dict(ckpt["model"])
    torch.manual_seed(0)
    student = build_model("resnet20", splits.num_classes)
    dataset = PerSampleCIFAR(splits.train.x, splits.train.y, splits.mean, splits.std)
    result = run_plain(dataset, teacher, student, workers, steps)
    result["wall_s"] = time.perf_counter() - start
    return result


# -- (c) torchdistill --------------------------------------------------------------------------------------
def torchdistill_status() -> dict[str, Any]:
    """Probe whether torchdistill imports on this torch (in a subprocess: a broken torchvision can abort)."""
    probe: dict[str, Any] = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
                             "torchdistill_installed": importlib.util.find_spec("torchdistill") is not None,
                             "torchvision_installed": importlib.util.find_spec("torchvision") is not None}
    if probe["torchdistill_installed"]:
        proc = subprocess.run([sys.executable, "-c", "import torchdistill.core.distillation"],
                              capture_output=True, text=True)
        probe["import_error"] = (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else None
        if proc.returncode == 0:
            return {"status": "not run", "probe": probe,
                    "reason": "torchdistill imports here, but this script has no torchdistill runner yet"}
    return {"status": "not run", "probe": probe, "reason": TORCHDISTILL_FINDING}


# -- report ------------------------------------------------------------------------------------------------
def ratios(ways: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def rate(name: str) -> float | None:
        return ways.get(name, {}).get("img_per_s")

    kd, lk, plain = rate("lakd_kd"), rate("lakd_lakd"), rate("plain")
    return {"lakd_kd_over_plain": kd / plain if kd and plain else None,
            "lakd_lakd_over_lakd_kd": lk / kd if lk and kd else None}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| way | precision / format | steps | images | train s | img/s |", "|---|---|---:|---:|---:|---:|"]
    for name, w in result["ways"].items():
        if "img_per_s" not in w:
            lines.append(f"| {name} | - | - | - | - | {w.get('status', 'not run')} |")
            continue
        lines.append(f"| {name} | {w['precision']} / {w['memory_format']} | {w['steps']} | {w['images']} | "
                     f"{w['train_s']:.1f} | {w['img_per_s']:.0f} |")
    lines.append("")
    for key, value in result["ratios"].items():
        shown = "n/a" if value is None else f"{value:.2f}x"
        lines.append(f"{key}: {shown} (target >= {TARGETS[key]}x)")
    return "\n".join(lines)


def default_data_root() -> Path:
    env = os.environ.get("LAKD_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="limit each way to N steps (default: full epoch)")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $LAKD_DATA, else ../shared/data")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (b); mdistiller default 2")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"subset of {','.join(WAYS)}")
    args = parser.parse_args(argv)
    ways_wanted = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = sorted(set(ways_wanted) - set(WAYS))
    if unknown or (args.steps is not None and args.steps < 1):
        parser.error(f"unknown way(s) {unknown}" if unknown else "--steps must be >= 1")
    data_root = (args.data_root or default_data_root()).resolve()
    teacher = args.teacher.resolve()

    ways: dict[str, dict[str, Any]] = {}
    for name in ways_wanted:  # sequential: never two ways on the CPU at once
        print(f"running {name} ...", flush=True)
        ways[name] = (run_lakd(name.removeprefix("lakd_"), data_root, teacher, args.steps) if name != "plain"
                      else plain_way(data_root, teacher, args.workers, args.steps))
        print(f"  {ways[name]['img_per_s']:.0f} img/s over {ways[name]['steps']} steps", flush=True)
    ways["torchdistill"] = torchdistill_status()
    threads = {w.get("torch_threads") for w in ways.values() if "torch_threads" in w}
    r = ratios(ways)
    result = {
        "benchmark": "peer_comparison",
        "task": "KD resnet56 -> resnet20, CIFAR-10 (45,000 train after a 5,000 val carve), batch 128, one epoch",
        "timing": "every step timed, none excluded as warm-up; img/s = images trained / seconds of the epoch loop",
        "steps_limit": args.steps,
        "smoke_only": args.steps is not None,
        "data_root": str(data_root),
        "teacher": str(teacher),
        "environment": {**environment_info(), "loadavg_end": os.getloadavg(),
                        "same_torch_threads": len(threads) <= 1},
        "ways": ways,
        "ratios": r,
        "targets": {k: {"target": t, "met": None if r[k] is None else r[k] >= t} for k, t in TARGETS.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\ntorchdistill: {ways['torchdistill']['status']} ({ways['torchdistill']['reason'][:100]}...)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
