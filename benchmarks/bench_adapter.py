"""What the any-model adapter costs: img/s of short `lakd distill` runs, back to back in one invocation.

1. The zoo, before and after the adapter: cifar10-cpu KD and LAKD (resnet56 -> resnet20) with this checkout's
   code and with the code of ``--before`` (a git commit, checked out into a temporary worktree), alternating.
2. A hooked torchvision ResNet-18 student (``torchvision:resnet18``) of the same teacher: LAKD vs KD img/s
   (target: LAKD >= 0.9x KD), with LAKD's local modules (``detach_until=1``, per-module backward) and end to end.

    LAKD_DATA=../shared/data python benchmarks/bench_adapter.py --before 447b28c \\
        --out benchmarks/results/adapter_overhead.json

Needs torchvision (the torch 2.14.1 venv of benchmarks/make_torchdistill_venv.sh has it). Each run trains one
epoch on ``--train-limit`` images (img/s is the trainer's own, measured over the training loop only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-c", "configs/cifar10_cpu.yaml", "-c"]
ZOO = {"kd": [*BASE, "configs/methods/kd.yaml"], "lakd": [*BASE, "configs/methods/lakd.yaml"]}
TV = ["--student", "torchvision:resnet18"]
HOOKED = {"kd": [*BASE, "configs/methods/kd.yaml", *TV], "lakd-local": [*BASE, "configs/methods/lakd_local.yaml", *TV],
          "lakd": [*BASE, "configs/methods/lakd.yaml", *TV]}


def run(src: Path, args: list[str], out: Path, train_limit: int) -> float:
    """img/s of one short run with the lakd package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "lakd.cli", "distill", *args, "--epochs", "1", "--out", str(out), "--force",
           "--no-progress", f"data.train_limit={train_limit}", "data.test_limit=500", "train.eval_test=false"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return float(row["img_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git commit of the code before the adapter")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=6400)
    parser.add_argument("--hooked-before", action="store_true",
                        help="run the hooked ResNet-18 with the --before code too, interleaved (its LAKD/KD ratio "
                             "before and after), and the zoo's lakd-local as well")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapter_overhead.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-adapter-"))
    before = scratch / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                   capture_output=True)
    runs: dict[str, list[float]] = {}
    try:
        zoo = {**ZOO, "lakd-local": [*BASE, "configs/methods/lakd_local.yaml"]} if args.hooked_before else ZOO
        for _ in range(args.repeats):
            for method, flags in zoo.items():
                for label, src in (("before", before / "src"), ("after", ROOT / "src")):
                    key = f"zoo/{method}/{label}"
                    runs.setdefault(key, []).append(run(src, flags, scratch / key.replace("/", "-"),
                                                        args.train_limit))
                    print(key, runs[key][-1], flush=True)
            codes = (("/before", before / "src"), ("", ROOT / "src")) if args.hooked_before else (("", ROOT / "src"),)
            for label, src in codes:
                for method, flags in HOOKED.items():
                    key = f"torchvision_resnet18/{method}{label}"
                    runs.setdefault(key, []).append(run(src, flags, scratch / key.replace("/", "-"), args.train_limit))
                    print(key, runs[key][-1], flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    median = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {
        "zoo_kd_after_over_before": median["zoo/kd/after"] / median["zoo/kd/before"],
        "zoo_lakd_after_over_before": median["zoo/lakd/after"] / median["zoo/lakd/before"],
        "torchvision_resnet18_lakd_local_over_kd": median["torchvision_resnet18/lakd-local"]
        / median["torchvision_resnet18/kd"],
        "torchvision_resnet18_lakd_over_kd": median["torchvision_resnet18/lakd"] / median["torchvision_resnet18/kd"],
    }
    if args.hooked_before:  # within-round ratios, their median: steadier than a ratio of medians on a drifting VM
        for label in ("/before", ""):
            for method in ("lakd-local", "lakd"):
                within = [a / b for a, b in zip(runs[f"torchvision_resnet18/{method}{label}"],
                                                runs[f"torchvision_resnet18/kd{label}"], strict=True)]
                ratios[f"torchvision_resnet18_{method}_over_kd{label.replace('/', '_')}"] = statistics.median(within)
        ratios["zoo_lakd_local_after_over_before"] = median["zoo/lakd-local/after"] / median["zoo/lakd-local/before"]
    import torch

    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "before": args.before,
              "train_limit": args.train_limit, "repeats": args.repeats, "img_per_s": runs, "median": median,
              "ratios": ratios, "machine": {"processor": platform.processor() or platform.machine(),
                                             "cpu_count": os.cpu_count(), "torch": torch.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
