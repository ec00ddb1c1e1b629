"""Peer comparison in one run: one KD epoch (resnet56 -> resnet20, CIFAR-10, batch 128), timed several ways.

(a) lakd itself: ``lakd distill`` in a subprocess, read from metrics.jsonl: KD at its defaults
    (``train.precision=auto``: bf16 autocast + channels_last where the CPU has AMX / AVX512-BF16), KD at
    ``--precision fp32`` (channels_last still auto), KD at fp32 with ``train.channels_last=false`` (NCHW), and
    LAKD at its defaults (for the LAKD/KD ratio) — all as a one-epoch run's defaults, which do not compile —
    and KD (bf16, fp32) and LAKD with ``distill.compile=true``, what a run of 1,000+ steps does: two epochs, the
    second reported (the first holds the compilation; its extra seconds are recorded as ``compile_s``).
(b) torchdistill, in its own venv (``bash benchmarks/make_torchdistill_venv.sh`` makes benchmarks/.venv-torchdistill;
    without it these ways are recorded as ``not run`` with the reason): benchmarks/torchdistill/run_kd.py drives
    torchdistill's DistillationBox from a YAML the way its examples/torchvision/image_classification.py does,
    with its CIFAR ResNet-56 / ResNet-20 and KDLoss, fp32 NCHW (torchdistill has no AMP or channels_last
    option for image classification). ``torchdistill`` is the example's behaviour (the teacher is never put in
    eval mode); ``torchdistill_teacher_eval`` adds ``teacher.eval()``.
(c) plain PyTorch the way mdistiller / RepDistiller train: a Dataset returning one PIL-augmented sample at a
    time, ``DataLoader(batch_size=128, shuffle=True, num_workers=2)`` (mdistiller's default), fp32, NCHW.

Same 45,000 training images (lakd's split after its 5,000-image validation carve), same augmentation (pad-4 crop,
flip, CIFAR-10 mean/std), batch 128, SGD lr 0.1 momentum 0.9 nesterov wd 5e-4, KD T 4 with CE 0.1 / KD 0.9, same
teacher weights (lakd's checkpoint, renamed for torchdistill's identical ResNet-56), torch's default thread
count (the plain loop keeps the peers' SGD without nesterov and a constant lr). The ways run one after another.
Every step is timed (no warm-up excluded, as lakd's own ``img_per_s``): from the start of the epoch's iteration
to the last optimizer step, so DataLoader worker start-up counts for the peers as it does in their epochs.
What differs on the torchdistill side is listed in ``TORCHDISTILL_NOTES`` (also written into the JSON).

Run:  python benchmarks/peer_comparison.py [--steps N] [--data-root ../shared/data] [--workers 2]
          [--out benchmarks/results/peer_comparison.json] [--ways lakd_kd,torchdistill,...]
``--steps N`` cuts every way to N steps (smoke runs; such numbers say nothing about speed, and they go to
runs/peer_comparison_smoke.json unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
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

from lakd.checkpoint import checkpoint_meta
from lakd.data import load_splits
from lakd.engine import load_checkpoint
from lakd.engine.host_memory import MMAP_THRESHOLD, TRIM_THRESHOLD
from lakd.models import build_model
from lakd.run import environment_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO / "benchmarks" / "teachers" / "cifar10_resnet56_e8.pt"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "peer_comparison.json"
SMOKE_OUT = REPO / "runs" / "peer_comparison_smoke.json"  # --steps runs never overwrite the committed result
PEER_PYTHON = REPO / "benchmarks" / ".venv-torchdistill" / "bin" / "python"
TD_DRIVER = REPO / "benchmarks" / "torchdistill" / "run_kd.py"
MAKE_PEER_VENV = "bash benchmarks/make_torchdistill_venv.sh"
BATCH = 128
VAL_SIZE = 5000
SPLIT_SEED = 0
COMPILED = ("distill.compile=true",)
# way -> (lakd method, extra `lakd distill` arguments). A one-epoch run is too short for `distill.compile: auto` to
# compile (lakd.compiling.COMPILE_MIN_STEPS), so the plain ways run eagerly (teacher folded); the *_compiled
# ways are what auto does in a run of 1,000+ steps (the 15-epoch protocol): they train two epochs and report
# the second, the first holding the one-off compilation (its extra seconds are recorded as compile_s).
LAKD_WAYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lakd_kd": ("kd", ()),  # defaults: precision auto, channels_last auto
    "lakd_kd_fp32": ("kd", ("--precision", "fp32")),
    "lakd_kd_fp32_nchw": ("kd", ("--precision", "fp32", "train.channels_last=false")),
    "lakd_lakd": ("lakd", ()),
    "lakd_kd_compiled": ("kd", COMPILED),
    "lakd_kd_fp32_compiled": ("kd", ("--precision", "fp32", *COMPILED)),
    "lakd_lakd_compiled": ("lakd", COMPILED),
    # what train.malloc (glibc thresholds, lakd.engine.host_memory) is worth on its own: lakd with it off
    "lakd_kd_fp32_compiled_system_malloc": ("kd", ("--precision", "fp32", *COMPILED, "train.malloc=system")),
}
# The glibc settings train.malloc=auto makes through mallopt, as environment variables for a process that is not
# lakd's: torchdistill given the same allocator, so that a ratio can be read with the allocator taken out.
KEPT_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
# way -> (run_kd.py --teacher-mode, extra environment)
TD_WAYS: dict[str, tuple[str, dict[str, str]]] = {
    "torchdistill": ("train", {}), "torchdistill_teacher_eval": ("eval", {}),
    "torchdistill_kept_malloc": ("train", KEPT_MALLOC_ENV),
}
TD_DEFAULT_WAYS = ("torchdistill", "torchdistill_teacher_eval")  # torchdistill as a user runs it
WAYS = (*LAKD_WAYS, *TD_WAYS, "plain")
LAKD_KD_WAYS = ("lakd_kd", "lakd_kd_fp32", "lakd_kd_fp32_nchw", "lakd_kd_compiled", "lakd_kd_fp32_compiled")
# ratio -> (numerator, denominator, target or None, what it compares); a tuple of ways means the fastest of those
# that ran ("each side's best setting on this CPU").
RATIOS: dict[str, tuple[str | tuple[str, ...], str | tuple[str, ...], float | None, str]] = {
    "lakd_kd_over_torchdistill": ("lakd_kd", "torchdistill", 3.0,
                                  "defaults: lakd precision=auto vs torchdistill's example as it runs"),
    "lakd_best_over_torchdistill_best": (LAKD_KD_WAYS, TD_DEFAULT_WAYS, 3.0,
                                         "each side's fastest KD way on this CPU"),
    "lakd_kd_fp32_over_torchdistill": ("lakd_kd_fp32", "torchdistill", 1.5,
                                       "fp32 vs fp32 (lakd channels_last auto), torchdistill as its example runs"),
    "lakd_kd_fp32_over_torchdistill_best": ("lakd_kd_fp32", TD_DEFAULT_WAYS, 1.5,
                                            "fp32 vs fp32, against torchdistill's faster teacher mode"),
    "lakd_kd_fp32_nchw_over_torchdistill": ("lakd_kd_fp32_nchw", "torchdistill", None,
                                            "fp32 NCHW on both sides: only the data path and the loop differ"),
    "lakd_lakd_over_lakd_kd": ("lakd_lakd", "lakd_kd", 0.95, "LAKD vs KD, both lakd defaults of a one-epoch run"),
    "lakd_kd_compiled_over_torchdistill": ("lakd_kd_compiled", "torchdistill", 3.0,
                                           "lakd defaults of a long run (compiled teacher) vs torchdistill's example"),
    "lakd_kd_fp32_compiled_over_torchdistill": ("lakd_kd_fp32_compiled", "torchdistill", 1.5,
                                                "fp32 vs fp32, lakd's compiled teacher (a long run's default)"),
    "lakd_kd_fp32_compiled_over_torchdistill_best": ("lakd_kd_fp32_compiled", TD_DEFAULT_WAYS, 1.5,
                                                     "fp32 vs fp32, compiled teacher vs torchdistill's faster mode"),
    "lakd_kd_fp32_compiled_over_torchdistill_kept_malloc": (
        "lakd_kd_fp32_compiled", "torchdistill_kept_malloc", None,
        "fp32 vs fp32 with the same glibc malloc settings on both sides: the allocator taken out of the ratio"),
    "lakd_kd_fp32_compiled_malloc_gain": ("lakd_kd_fp32_compiled", "lakd_kd_fp32_compiled_system_malloc", None,
                                          "lakd's train.malloc=auto over train.malloc=system, fp32 compiled"),
    "lakd_lakd_compiled_over_lakd_kd_compiled": ("lakd_lakd_compiled", "lakd_kd_compiled", 0.95,
                                                 "LAKD vs KD, both with a long run's compiled teacher"),
    "lakd_kd_over_plain": ("lakd_kd", "plain", 2.0, "lakd defaults vs a plain per-sample fp32 loop"),
}
TARGETS = {name: spec[2] for name, spec in RATIOS.items()}

# How the torchdistill ways differ from lakd's, recorded next to the numbers.
TORCHDISTILL_NOTES = {
    "example": "torchdistill examples/torchvision/image_classification.py + a YAML in its 1.x sample format; the "
               "DistillationBox builds the DataLoader (RandomSampler, requires_supp wrapper), SGD, scheduler and "
               "WeightedSumLoss(KDLoss); each step: forward_process (teacher under no_grad, then student), "
               "post_forward_process (backward, optimizer.step, zero_grad, scheduler.step), loss.item()",
    "teacher_mode": "nothing in torchdistill 1.1.5 calls teacher.eval(): its default pre-epoch process only calls "
                    "student_model.train(), so the frozen teacher runs in train mode (batch-statistics BatchNorm, "
                    "running stats updated) as its example does; torchdistill_teacher_eval adds teacher.eval() "
                    "through a registered pre-epoch process",
    "precision": "fp32, NCHW: torchdistill's image-classification path has no autocast / bf16 / channels_last "
                 "option (mixed precision exists only through Hugging Face accelerate in its transformers examples)",
    "deviations": [
        "own venv: torch 2.14.1 (PyPI CUDA build, run on the CPU) + torchvision 0.29.1, against lakd's 2.13.0+cpu",
        "data: lakd's 45,000-image train split (JPEG CIFAR copy) served one PIL image at a time like "
        "torchvision.datasets.CIFAR10, with torchvision transforms (RandomCrop 32 pad 4, flip, ToTensor, "
        "Normalize) and lakd's CIFAR-10 mean/std; lakd uses its own batched in-memory augmentation",
        "DataLoader num_workers = --workers (default 2 = this machine's cores) instead of the samples' 16; "
        "pin_memory off (no GPU); drop_last on, as lakd (351 steps)",
        "KDLoss alpha 0.1 (its alpha weights CE) = lakd's CE 0.1 / KD 0.9; the samples use alpha 0.9",
        "SGD nesterov + wd 5e-4 and a per-step cosine (CosineAnnealingLR, T_max = steps of the epoch) as "
        "lakd's cifar10-cpu config, instead of the samples' wd 1e-4 and MultiStepLR",
        "teacher: lakd's checkpoint with keys renamed into torchdistill's resnet56 (same architecture; max "
        "logit difference recorded); student: torchdistill's resnet20, random init (seed 0)",
        "end-of-epoch validation and checkpointing left out (lakd's img/s does not time them either)",
    ],
}


# -- (a) lakd ----------------------------------------------------------------------------------------------
def run_lakd(method: str, data_root: Path, teacher: Path, steps: int | None,
             extra: tuple[str, ...] = (), epochs: int = 1) -> dict[str, Any]:
    """``lakd distill`` in its own process (the real trainer; ``extra`` arguments such as ``--precision fp32`` or
    ``train.channels_last=false``, else its auto precision / memory format); the last of ``epochs`` epochs is
    reported, and with two, how much longer the first took (``compile_s``: compilation's one-off cost)."""
    with tempfile.TemporaryDirectory(prefix=f"peer-{method}-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lakd", "distill", "-c", "configs/cifar10_cpu.yaml",
               "-c", f"configs/methods/{method}.yaml", "--teacher", str(teacher), "--data-root", str(data_root),
               "--batch-size", str(BATCH), "--epochs", str(epochs), "--out", str(out), "--no-progress",
               f"data.val_size={VAL_SIZE}", f"data.split_seed={SPLIT_SEED}",
               "train.eval_test=false", "data.test_limit=500", *extra]  # the end-of-epoch eval is untimed
        if steps:
            cmd.append(f"data.train_limit={steps * BATCH}")  # drop_last batches: exactly `steps` steps
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"lakd distill ({method}) failed with exit {proc.returncode}:\n{proc.stderr[-2000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        row = rows[-1]
        env = json.loads((out / "run.json").read_text())["environment"]
    images = round(row["img_per_s"] * row["train_time_s"])
    device = env.get("device", "")  # e.g. "cpu, fp32, channels_last"
    parts = [p.strip() for p in device.split(",")]
    return {"status": "ok", "what": f"`lakd distill` {method} (real trainer, subprocess)",
            "img_per_s": row["img_per_s"],
            "steps": images // BATCH, "images": images, "train_s": row["train_time_s"], "wall_s": wall,
            "precision": parts[1] if len(parts) > 1 else None, "memory_format": parts[2] if len(parts) > 2 else None,
            "torch_threads": env.get("torch_threads"), "loadavg_1m_before": load, "train_loss": row["train_loss"],
            "command": " ".join(["lakd", *cmd[3:]]), "epochs": epochs, "reported_epoch": len(rows),
            "compile": extra_value(extra, "distill.compile") or "auto (not compiled: a short run)",
            **({"compile_s": rows[0]["train_time_s"] - row["train_time_s"]} if len(rows) > 1 else {})}


def extra_value(extra: tuple[str, ...], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in extra if a.startswith(f"{key}=")), None)


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
    return {"status": "ok", "what": f"plain PyTorch, per-sample PIL Dataset + DataLoader(num_workers={workers})",
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


# -- (b) torchdistill, in its own venv -------------------------------------------------------------------------
def run_torchdistill(teacher_mode: str, data_root: Path, teacher: Path, workers: int, steps: int | None,
                     python: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One epoch of torchdistill's DistillationBox (benchmarks/torchdistill/run_kd.py) with the peer venv's python.

    No venv -> ``status: not run`` with how to make it; a failing run -> ``status: failed`` with its stderr tail
    (the other ways are still recorded). ``python`` defaults to the peer venv's; ``env`` is added to the
    environment (and recorded)."""
    python = python or PEER_PYTHON
    if not python.is_file():
        return {"status": "not run", "teacher_mode_requested": teacher_mode,
                "reason": f"the torchdistill venv is missing ({python} not found); torchdistill runs in its own "
                          "venv (its torch 2.14.1 / torchvision 0.29.1), never in lakd's",
                "how_to_run": f"{MAKE_PEER_VENV}, then run this script again"}
    with tempfile.TemporaryDirectory(prefix=f"peer-td-{teacher_mode}-") as tmp:
        out = Path(tmp) / "result.json"
        flags = ["--teacher-mode", teacher_mode, "--data-root", str(data_root), "--teacher", str(teacher),
                 "--workers", str(workers), *(["--steps", str(steps)] if steps else [])]
        cmd = [str(python), str(TD_DRIVER), *flags, "--out", str(out)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
        wall = time.perf_counter() - start
        command = " ".join([*(f"{k}={v}" for k, v in (env or {}).items()),
                            str(python.relative_to(REPO)) if python.is_relative_to(REPO) else str(python),
                            str(TD_DRIVER.relative_to(REPO)), *flags])
        if proc.returncode != 0 or not out.is_file():
            return {"status": "failed", "exit_code": proc.returncode, "teacher_mode_requested": teacher_mode,
                    "reason": (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1],
                    "stderr_tail": proc.stderr[-2000:], "command": command}
        result = json.loads(out.read_text())
    return {"status": "ok", **result, "wall_s": wall, "loadavg_1m_before": load, "command": command}


def torchdistill_way(name: str, data_root: Path, teacher: Path, workers: int, steps: int | None,
                     python: Path | None = None) -> dict[str, Any]:
    mode, env = TD_WAYS[name]
    return run_torchdistill(mode, data_root, teacher, workers, steps, python, env)


# -- report ------------------------------------------------------------------------------------------------
def _rate(ways: dict[str, dict[str, Any]], name: str) -> float | None:
    w = ways.get(name, {})
    return w.get("img_per_s") if w.get("status", "ok") == "ok" else None


def _pick(ways: dict[str, dict[str, Any]], spec: str | tuple[str, ...]) -> tuple[str | None, float | None]:
    """A way's name and img/s; for a tuple, the fastest of those that ran."""
    names = (spec,) if isinstance(spec, str) else spec
    ran = [(n, r) for n in names if (r := _rate(ways, n))]
    return max(ran, key=lambda nr: nr[1]) if ran else (None, None)


def ratio_terms(ways: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every ratio with the ways it used, its target and whether it is met (None where a way did not run)."""
    table: dict[str, dict[str, Any]] = {}
    for key, (num_spec, den_spec, target, what) in RATIOS.items():
        (num, a), (den, b) = _pick(ways, num_spec), _pick(ways, den_spec)
        value = a / b if a and b else None
        table[key] = {"value": value, "numerator": num, "denominator": den, "target": target,
                      "met": None if value is None or target is None else value >= target, "compares": what}
    return table


def ratios(ways: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {key: t["value"] for key, t in ratio_terms(ways).items()}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| way | precision / format | teacher | steps | images | train s | img/s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, w in result["ways"].items():
        if w.get("status", "ok") != "ok":
            lines.append(f"| {name} | - | - | - | - | - | {w.get('status')}: {w.get('reason', '')[:60]} |")
            continue
        teacher = w.get("teacher_mode", "eval")  # lakd and the plain loop always run the teacher in eval mode
        lines.append(f"| {name} | {w['precision']} / {w['memory_format']} | {teacher} | {w['steps']} | "
                     f"{w['images']} | {w['train_s']:.1f} | {w['img_per_s']:.0f} |")
    lines.append("")
    for key, t in result["targets"].items():
        shown = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
        used = f" ({t['numerator']} / {t['denominator']})" if t["value"] is not None else ""
        goal = "no target" if t["target"] is None else f"target >= {t['target']}x" + (
            "" if t["met"] is None else (", met" if t["met"] else ", NOT met"))
        lines.append(f"{key}: {shown}{used} [{goal}]")
    return "\n".join(lines)


def default_data_root() -> Path:
    env = os.environ.get("LAKD_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="limit each way to N steps (default: full epoch)")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $LAKD_DATA, else ../shared/data")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers for torchdistill and the plain loop (default 2: mdistiller's, and "
                             "this machine's cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default: {DEFAULT_OUT.relative_to(REPO)}; with --steps {SMOKE_OUT.relative_to(REPO)}")
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
        if name in LAKD_WAYS:
            method, extra = LAKD_WAYS[name]
            ways[name] = run_lakd(method, data_root, teacher, args.steps, extra, epochs=2 if extra_value(
                extra, "distill.compile") == "true" else 1)
        elif name in TD_WAYS:
            ways[name] = torchdistill_way(name, data_root, teacher, args.workers, args.steps)
        else:
            ways[name] = plain_way(data_root, teacher, args.workers, args.steps)
        w = ways[name]
        print(f"  {w['img_per_s']:.0f} img/s over {w['steps']} steps" if w["status"] == "ok"
              else f"  {w['status']}: {w['reason']}", flush=True)
    threads = {w.get("torch_threads") for w in ways.values() if "torch_threads" in w}
    terms = ratio_terms(ways)
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
        "ratios": {key: t["value"] for key, t in terms.items()},
        "targets": terms,
        "torchdistill_notes": TORCHDISTILL_NOTES,
    }
    out = args.out or (SMOKE_OUT if args.steps is not None else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    for name, w in ways.items():
        if w["status"] != "ok":
            print(f"\n{name}: {w['status']}: {w['reason']}" + (f" -- {w['how_to_run']}" if "how_to_run" in w else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
