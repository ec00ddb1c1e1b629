"""Peak training memory of LAKD `local` vs `joint` backward vs end-to-end KD, at equal batch size.

Each configuration runs in its own fresh process (peak RSS is per process and never goes down), for a few
training steps on random data with the real student/teacher architectures. Two numbers per configuration:

* ``saved_peak_mb``: the peak bytes autograd holds for backward (saved activations), counted exactly with
  saved-tensor hooks — the quantity local backward is designed to shrink;
* ``rss_peak_mb`` / ``rss_delta_mb``: the process's peak resident memory, and its growth over the state after
  building the models (what `top` would show).

Run:  python benchmarks/bench_memory.py --batch-size 128 --teacher resnet56_a --out benchmarks/results/memory_cpu.json
(the step times are only meaningful on an otherwise idle machine; the saved-tensor peaks are exact counts)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

LOCAL = {"detach_until": 1.0, "backward": "local"}  # configs/methods/lakd_local.yaml
CONFIGS = {
    "kd (end-to-end)": ("kd", {}),
    "lakd end to end (default)": ("lakd", {}),
    "lakd detached, joint backward": ("lakd", {"detach_until": 1.0, "backward": "joint"}),
    "lakd local modules (lakd-local)": ("lakd", LOCAL),
    "lakd local + teacher-tail aux": ("lakd", {**LOCAL, "aux_weight": 1.0, "aux_head": "teacher_tail"}),
    "lakd local, block split": ("lakd-study", {**LOCAL, "split": "block"}),  # a study variant
}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(method: str, params: dict, student: str, teacher: str, batch: int, steps: int) -> dict:
    import torch

    from lakd.distill import build_distiller
    from lakd.engine.memory import SavedTensorMeter
    from lakd.models import build_model

    torch.manual_seed(0)
    d = build_distiller(method, build_model(student, 10), build_model(teacher, 10), params, total_epochs=10)
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    meter = SavedTensorMeter()
    base = rss_mb()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with meter.track():
            d.train_step(x, y, 0.5, backward=lambda loss: loss.backward())  # half-way through training
        opt.step()
    elapsed = time.perf_counter() - start
    return {"saved_peak_mb": meter.peak_mb, "rss_peak_mb": rss_mb(), "rss_delta_mb": rss_mb() - base,
            "step_s": elapsed / steps, "img_per_s": batch * steps / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PARAMS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_one(args.worker[0], json.loads(args.worker[1]), args.student, args.teacher,
                         args.batch_size, args.steps)
        print(json.dumps(result))
        return
    rows = {}
    for name, (method, params) in CONFIGS.items():
        cmd = [sys.executable, __file__, "--student", args.student, "--teacher", args.teacher, "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--worker", method, json.dumps(params)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:18s} " + "  ".join(f"{k} {v:.1f}" for k, v in rows[name].items()), flush=True)
    ref, e2e = rows["kd (end-to-end)"], rows["lakd end to end (default)"]
    for row in rows.values():
        row["saved_vs_kd"] = row["saved_peak_mb"] / ref["saved_peak_mb"]
        row["saved_vs_lakd_end_to_end"] = row["saved_peak_mb"] / e2e["saved_peak_mb"]
        row["rss_delta_vs_kd"] = row["rss_delta_mb"] / ref["rss_delta_mb"]
    import torch

    summary = {"benchmark": "memory", "student": args.student, "teacher": args.teacher,
               "batch_size": args.batch_size, "steps": args.steps, "precision": "fp32", "results": rows,
               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "command": " ".join(["python", "benchmarks/bench_memory.py", *sys.argv[1:]])}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
