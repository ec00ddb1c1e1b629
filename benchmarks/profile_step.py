"""Where a training step's time goes: torch.profiler over a few steps of one method, top ops by self CPU time.

Same student/teacher/batch as the cifar10 protocols (resnet20 <- resnet56, batch 128, 32x32), the trainer's own
runtime (precision=auto: bf16 autocast + channels_last on AMX CPUs) and the method's own step (LAKD's local
backward included). Random images: the data path is not what this looks at.

Run:  python benchmarks/profile_step.py --method kd --method lakd [--steps 12] [--warmup 3] [--top 25]
          [--out benchmarks/results/profile_step.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from lakd.distill import build_distiller
from lakd.engine import resolve_runtime
from lakd.models import build_model


def run(method: str, steps: int, warmup: int, top: int, params: dict[str, Any], teacher_arch: str,
        teacher_ckpt: Path | None = None, data_root: Path | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    runtime = resolve_runtime("cpu", "auto", "auto")
    student, teacher = build_model("resnet20", 10), build_model(teacher_arch, 10)
    if teacher_ckpt is not None:  # a trained teacher: its activations, not a random network's
        from lakd.checkpoint import checkpoint_meta, model_from_checkpoint
        from lakd.engine import load_checkpoint

        ckpt = load_checkpoint(teacher_ckpt)
        teacher = model_from_checkpoint(ckpt, checkpoint_meta(ckpt, teacher_ckpt), "teacher")
    task = build_distiller(method, student, teacher, params, total_epochs=10,
                           train_labels=torch.arange(45000) % 10).to(runtime.device)
    if runtime.channels_last:
        task.student().to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    task.train()
    params_list = [p for p in task.learnable_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params_list, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if data_root is not None:  # one real, normalised CIFAR-10 batch
        from lakd.data import load_splits
        from lakd.data.augment import normalise

        splits = load_splits("cifar10", data_root, 5000, 0)
        images = torch.from_numpy(splits.train.x[:128]).permute(0, 3, 1, 2)
        x = runtime.to_input(normalise(images, torch.tensor(splits.mean), torch.tensor(splits.std)))
        y = torch.from_numpy(splits.train.y[:128]).long()
    else:
        x = runtime.to_input(torch.randn(128, 3, 32, 32))
        y = torch.randint(0, 10, (128,))
    index = torch.randint(0, 45000, (128,))
    extra = {"index": index} if task.needs_index else {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        task.train_step(x, y, 0.5, backward=lambda loss: loss.backward(), autocast=runtime.autocast, **extra)
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    plain_ms = (time.perf_counter() - start) / steps * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    table = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
              "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in rows]
    return {"method": method, "params": params, "ms_per_step": plain_ms, "img_per_s": 128 / plain_ms * 1000,
            "precision": runtime.describe(), "top_ops": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", default=None, help="method name (repeat); default kd, lakd")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a method parameter, e.g. lakd:detach_until=1.0")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--teacher-ckpt", type=Path, default=None, help="trained teacher checkpoint")
    parser.add_argument("--data-root", type=Path, default=None, help="use one real CIFAR-10 batch from here")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import yaml

    methods = args.method or ["kd", "lakd"]
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in args.param:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        params.setdefault(method, {})[key] = yaml.safe_load(value)
    results = [run(m, args.steps, args.warmup, args.top, params[m], args.teacher, args.teacher_ckpt, args.data_root)
               for m in methods]
    for r in results:
        print(f"\n== {r['method']} {r['params'] or ''}: {r['ms_per_step']:.1f} ms/step ({r['img_per_s']:.0f} img/s, "
              f"{r['precision']})")
        for row in r["top_ops"]:
            print(f"  {row['self_ms_per_step']:8.2f} ms  {100 * row['share']:5.1f} %  x{row['calls_per_step']:5.1f}  "
                  f"{row['op']}")
    if len(results) > 1:
        base = results[0]["ms_per_step"]
        print("\n" + "  ".join(f"{r['method']}: {base / r['ms_per_step']:.3f}x {results[0]['method']}"
                               for r in results[1:]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "torch": torch.__version__,
                                        "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
