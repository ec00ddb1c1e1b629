"""Training-step time of several ways in one process, interleaved: an A/B that a drifting machine cannot bias.

``method_speed.py`` measures whole runs, one process each, one after another; on a shared machine whose speed
drifts by 30 % within minutes that cannot resolve a 5 % change. Here every way is built once (the cifar10-strong
pair: the committed ResNet-56 teacher, folded and compiled as ``lakd distill`` does, a ResNet-20 student, one
real batch of 128, precision=auto), then the ways take turns, ``--steps`` optimizer steps each, for ``--rounds``
rounds; each way's median step time over the rounds is reported, its ratio to the first way, and the median over
rounds of the ratio within each round (paired: drift slower than one round cancels).

Ways: ``kd``, ``lakd`` (end to end, the default), ``lakd-local`` (local modules, per-module backward), and each LAKD
way with ``-autograd`` appended: the same losses through autograd instead of the fused local losses
(lakd.distill.local_losses); ``crd`` (its published recipe, scores against the whole bank) and ``crd-gathered``
(the same scores from the gathered sampled rows, the released code's way).

``--runtimes`` measures each way under several precisions / memory formats as well (``auto``, or ``fp32``, ``bf16``
with ``+cl`` for channels_last): what ``precision=auto`` should pick on the machine at hand.

Run:  LAKD_DATA=../shared/data python benchmarks/step_speed.py [--ways kd lakd lakd-autograd ...]
          [--runtimes auto fp32 fp32+cl bf16+cl] [--steps 20] [--rounds 8] [--compile true]
          [--out benchmarks/results/step_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lakd.distill import Distiller, build_distiller
from lakd.distill.crd import CRD
from lakd.distill.lakd import LAKD
from lakd.engine import resolve_runtime
from lakd.engine.host_memory import keep_freed_host_memory
from lakd.models import build_model
from lakd.run import environment_info

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "benchmarks/teachers/cifar10_resnet56a_akamaster_ft20.pt"
WAYS: dict[str, tuple[str, dict[str, Any], bool]] = {  # name: (method, params, fast path: LAKD fused, CRD dense)
    "kd": ("kd", {}, True),
    "lakd": ("lakd", {}, True),
    "lakd-autograd": ("lakd", {}, False),
    "lakd-local": ("lakd", {"detach": True, "detach_until": 1.0, "backward": "local"}, True),
    "lakd-local-autograd": ("lakd", {"detach": True, "detach_until": 1.0, "backward": "local"}, False),
    "crd": ("crd", {}, True),  # scores against the whole bank (CIFAR's bank is small enough)
    "crd-gathered": ("crd", {}, False),  # scores from the gathered (B, K+1, D) rows, the released code's way
}


def real_batch(data_root: Path, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` training images of CIFAR-10, normalised as the trainer does."""
    from lakd.data import load_splits
    from lakd.data.augment import normalise

    splits = load_splits("cifar10", data_root, 5000, 0)
    images = torch.from_numpy(splits.train.x[:batch]).permute(0, 3, 1, 2)
    x = normalise(images, torch.tensor(splits.mean), torch.tensor(splits.std))
    return x, torch.from_numpy(splits.train.y[:batch]).long()


def runtime_of(spec: str) -> Any:
    """``auto`` (what the trainer picks) or ``<fp32|bf16>[+cl]``: a precision, channels_last or not."""
    if spec == "auto":
        return resolve_runtime("cpu", "auto", "auto")
    precision, _, layout = spec.partition("+")
    if precision not in ("fp32", "bf16") or layout not in ("", "cl"):
        raise SystemExit(f"error: runtime '{spec}' is not auto or fp32/bf16 with an optional +cl")
    return resolve_runtime("cpu", precision, "true" if layout else "false")


def build_way(name: str, x: torch.Tensor, y: torch.Tensor, compile_it: bool, runtime_spec: str = "auto"
              ) -> tuple[Distiller, Callable[[], None]]:
    """Way ``name``'s distiller and one optimizer step of it as a closure (built once: model, teacher, optimizer,
    batch), under ``runtime_spec`` (see ``runtime_of``)."""
    from lakd.checkpoint import checkpoint_meta, model_from_checkpoint
    from lakd.engine import load_checkpoint
    from lakd.models.frozen import FrozenForward
    from lakd.run import prepare_teacher

    method, params, fused = WAYS[name]
    runtime = runtime_of(runtime_spec)
    ckpt = load_checkpoint(TEACHER)
    teacher, _ = prepare_teacher(model_from_checkpoint(ckpt, checkpoint_meta(ckpt, TEACHER), "teacher"), (3, 32, 32))
    torch.manual_seed(0)
    task = build_distiller(method, build_model("resnet20", 10), teacher, params, total_epochs=15,
                           train_labels=torch.arange(45000) % 10).to(runtime.device)
    if isinstance(task, LAKD):
        task.fused_local_losses = fused
    if isinstance(task, CRD) and not fused:
        task.contrast.dense_bank_factor = 0
    if runtime.channels_last:
        task.student().to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    if compile_it:
        task.set_teacher_inference(FrozenForward(teacher, compile_it=True))
        task.compile_losses()
    task.train()
    optimizer = torch.optim.SGD([p for p in task.learnable_parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                nesterov=True, weight_decay=5e-4)
    xb = runtime.to_input(x)

    batch = {"index": torch.randperm(45000)[:x.shape[0]]} if task.needs_index else {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        task.train_step(xb, y, 0.5, backward=lambda loss: loss.backward(), autocast=runtime.autocast, **batch)
        optimizer.step()

    return task, step


def summarise(times: dict[str, list[float]], cpu: dict[str, list[float]], base: str, batch: int
              ) -> dict[str, dict[str, Any]]:
    """Per way: median wall and CPU ms/step over the rounds, img/s, and its speed relative to ``base`` three ways:
    ratio of medians (wall, CPU) and the median over rounds of the within-round ratio (paired: drift slower than
    one round cancels). CPU time (all threads) is beside wall time because on a shared VM the wall clock also
    counts time taken by others."""
    return {name: {"ms_per_step_median": statistics.median(t), "ms_per_step_rounds": t,
                   "cpu_ms_per_step_median": statistics.median(cpu[name]), "cpu_ms_per_step_rounds": cpu[name],
                   "img_per_s": batch / statistics.median(t) * 1000,
                   f"speed_vs_{base}": statistics.median(times[base]) / statistics.median(t),
                   f"cpu_speed_vs_{base}": statistics.median(cpu[base]) / statistics.median(cpu[name]),
                   f"paired_speed_vs_{base}": statistics.median(b / w for b, w in zip(times[base], t, strict=True))}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--runtimes", nargs="+", default=["auto"], help="auto, fp32, bf16, fp32+cl, bf16+cl")
    parser.add_argument("--steps", type=int, default=20, help="steps per way per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="steps per way before timing (compiles)")
    parser.add_argument("--compile", default="true", choices=("true", "false"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data_root = Path(os.environ.get("LAKD_DATA", REPO.parent / "shared/data"))
    malloc = keep_freed_host_memory("auto")
    x, y = real_batch(data_root, args.batch)
    for spec in args.runtimes:
        runtime_of(spec)  # a bad spec fails before anything is built
    names = [(way, spec) for way in args.ways for spec in args.runtimes]
    label = {(way, spec): way if len(args.runtimes) == 1 else f"{way}@{spec}" for way, spec in names}
    steps = {label[n]: build_way(n[0], x, y, args.compile == "true", n[1])[1] for n in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
            cpu[name].append((time.process_time() - start_cpu) / args.steps * 1000)
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {times[n][-1]:.1f}" for n in steps) + " ms/step")
    base = next(iter(steps))
    results = summarise(times, cpu, base, args.batch)
    for name, r in results.items():
        print(f"{name:22s} {r['ms_per_step_median']:7.1f} ms/step  {r['img_per_s']:6.0f} img/s  "
              f"{r[f'speed_vs_{base}']:.3f}x {base}, paired by round {r[f'paired_speed_vs_{base}']:.3f}x  "
              f"(CPU time: {r['cpu_ms_per_step_median']:.1f} ms/step, {r[f'cpu_speed_vs_{base}']:.3f}x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python benchmarks/step_speed.py " + " ".join(
            f"--ways {' '.join(args.ways)} --runtimes {' '.join(args.runtimes)} --steps {args.steps} "
            f"--rounds {args.rounds} --warmup {args.warmup} "
            f"--compile {args.compile} --batch {args.batch}".split()), "results": results, "malloc": malloc,
            "threads": torch.get_num_threads(), "environment": environment_info()}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
