"""Peak training memory of LAKD `local` vs `joint` backward vs end-to-end KD, at equal batch size.

Each configuration runs in its own fresh process (peak RSS is per process and never goes down), for a few
training steps on random data with the real student/teacher architectures. Two numbers per configuration:

* ``saved_peak_mb``: the peak bytes autograd holds for backward (saved activations), counted exactly with
  saved-tensor hooks — the quantity local backward is designed to shrink;
* ``rss_peak_mb`` / ``rss_delta_mb``: the process's peak resident memory, and its growth over the state after
  building the models (what `top` would show).

Run:  python benchmarks/bench_memory.py --batch-size 128 --teacher resnet56_a --out benchmarks/results/memory_cpu.json
(the step times are only meaningful on an otherwise idle machine; the saved-tensor peaks are exact counts)

With ``--protocol NAME`` the configurations are instead every method of a ``lakd bench`` protocol, each with the
parameters its protocol command resolves to (method file, per-pair settings, overrides) and the protocol's student
and batch size, so a comparison table can put each method's activation memory beside its accuracy:
      python benchmarks/bench_memory.py --protocol cifar10-strong --teacher resnet56_a \
          --out benchmarks/results/memory_cifar10-strong.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

LOCAL = {"detach_until": 1.0, "backward": "local", "teacher_inputs_until": 0.3}  # configs/methods/lakd_local.yaml
CONFIGS = {
    "kd (end-to-end)": ("kd", {}),
    "lakd end to end (default)": ("lakd", {}),
    "lakd detached, joint backward": ("lakd", {"detach_until": 1.0, "backward": "joint"}),
    "lakd local modules (lakd-local)": ("lakd", LOCAL),
    "lakd local + teacher-tail aux": ("lakd-study", {**LOCAL, "aux_weight": 1.0, "aux_head": "teacher_tail"}),
    "lakd local, block split": ("lakd-study", {**LOCAL, "split": "block"}),  # a study variant
}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def protocol_configs(protocol_name: str, methods: list[str] | None, pair: str | None = None
                     ) -> tuple[dict, str, int]:
    """(name -> (method, params)), student and batch size of every method of a bench protocol, as its commands
    resolve them (on ``pair``, or the first pair, of a protocol with pairs)."""
    from pathlib import Path

    from lakd.bench import command_config, load_protocol, plan_runs

    protocol = load_protocol(protocol_name)
    pairs = [pair or next(iter(protocol.pairs))] if protocol.pairs else None
    runs = plan_runs(protocol, methods, [0], pairs, None, Path("runs"), Path("results"))
    configs, students, batches = {}, set(), set()
    for run in runs:
        cfg = command_config(run.command(None, progress=False))
        configs[run.method] = (cfg.distill.method, cfg.distill.resolved_params())
        students.add(cfg.model.name)
        batches.add(cfg.data.batch_size)
    if len(students) != 1 or len(batches) != 1:
        raise SystemExit(f"protocol {protocol_name}: methods differ in student or batch size ({students}, {batches})")
    return configs, students.pop(), batches.pop()


def resolved_params(configs: dict) -> dict:
    """Each configuration's method and its fully resolved parameters (defaults included), for the record."""
    from lakd.distill import make_params, params_as_dict

    return {name: {"method": method, **params_as_dict(make_params(method, params))}
            for name, (method, params) in configs.items()}


def run_one(method: str, params: dict, student: str, teacher: str, batch: int, steps: int, progress: float,
            num_classes: int = 10) -> dict:
    import torch

    from lakd.distill import build_distiller
    from lakd.engine.memory import SavedTensorMeter
    from lakd.models import build_model

    torch.manual_seed(0)
    n_train = 50 * batch  # a memory bank's size (CRD) does not change what a step saves for backward
    labels = torch.arange(n_train) % num_classes
    d = build_distiller(method, build_model(student, num_classes), build_model(teacher, num_classes), params,
                        total_epochs=10,
                        train_labels=labels)
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, num_classes, (batch,))
    batch_extra = {"index": torch.randperm(n_train)[:batch]} if d.needs_index else {}
    meter = SavedTensorMeter()
    base = rss_mb()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with meter.track():
            d.train_step(x, y, progress, backward=lambda loss: loss.backward(), **batch_extra)
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
    parser.add_argument("--progress", type=float, default=0.5,
                        help="the point of training the steps are taken at (0.1: lakd-local's teacher-fed start)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--protocol", default=None, help="measure every method of this lakd bench protocol")
    parser.add_argument("--methods", nargs="+", default=None, help="with --protocol: only these methods")
    parser.add_argument("--pair", default=None, help="with --protocol: its pair to measure (default: the first)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of both models' heads")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PARAMS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_one(args.worker[0], json.loads(args.worker[1]), args.student, args.teacher,
                         args.batch_size, args.steps, args.progress, args.num_classes)
        print(json.dumps(result))
        return
    configs, reference, e2e_name = CONFIGS, "kd (end-to-end)", "lakd end to end (default)"
    if args.protocol:
        configs, args.student, args.batch_size = protocol_configs(args.protocol, args.methods, args.pair)
        reference, e2e_name = "kd", "lakd"
    rows = {}
    for name, (method, params) in configs.items():
        cmd = [sys.executable, __file__, "--student", args.student, "--teacher", args.teacher, "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--progress", str(args.progress),
               "--num-classes", str(args.num_classes),
               "--worker", method, json.dumps(params)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:18s} " + "  ".join(f"{k} {v:.1f}" for k, v in rows[name].items()), flush=True)
    ref, e2e = rows.get(reference), rows.get(e2e_name)
    for row in rows.values():
        if ref:
            row["saved_vs_kd"] = row["saved_peak_mb"] / ref["saved_peak_mb"]
            row["rss_delta_vs_kd"] = row["rss_delta_mb"] / ref["rss_delta_mb"]
        if e2e:
            row["saved_vs_lakd_end_to_end"] = row["saved_peak_mb"] / e2e["saved_peak_mb"]
    import torch

    summary = {"benchmark": "memory", "protocol": args.protocol, "pair": args.pair, "student": args.student,
               "teacher": args.teacher, "num_classes": args.num_classes,
               "batch_size": args.batch_size, "steps": args.steps, "progress": args.progress, "precision": "fp32",
               "params": resolved_params(configs), "results": rows,
               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "command": " ".join(["python", "benchmarks/bench_memory.py", *sys.argv[1:]])}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
