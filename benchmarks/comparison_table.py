"""The comparison table of one protocol: accuracy from its runs, speed and memory from clean measurements.

A run's own img/s and peak memory (in ``lakd bench``'s summary) depend on what else shared the machine while it
trained, so this table takes accuracy from the protocol's result JSONs (``lakd bench ... --summary-only`` writes
``summary.json``) and puts beside it img/s measured back to back (``benchmarks/method_speed.py``) and the
activations each method holds for backward (``benchmarks/bench_memory.py --protocol``).

Run:  python benchmarks/comparison_table.py benchmarks/results/cifar10-strong \\
          --speed benchmarks/results/method_speed_cifar10-strong.json \\
          --memory benchmarks/results/memory_cifar10-strong.json [--out table.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lakd.atomic import atomic_write_text


def _cell(entry: dict[str, Any], key: str) -> str:
    stat = entry.get(key)
    if not stat:
        return "–"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat.get("std") is not None else "")


def table(summary: dict[str, Any], speed: dict[str, Any] | None, memory: dict[str, Any] | None,
          reference: str = "kd") -> str:
    """Markdown rows sorted by mean validation top-1 (the selection criterion), best first."""
    speeds = {m: r["img_per_s"] for m, r in (speed or {}).get("methods", {}).items() if r.get("status") == "ok"}
    saved = {m: r["saved_peak_mb"] for m, r in (memory or {}).get("results", {}).items()}
    lines = ["| method | seeds | test top-1 at best val | last-epoch test | val top-1 | img/s | vs KD | "
             "saved for backward (MB) | vs KD |", "|---|---|---|---|---|---|---|---|---|"]
    methods = sorted(summary["methods"], key=lambda e: -e["best_val_top1"]["mean"])
    for e in methods:
        m = e["method"]
        img = f"{speeds[m]:.0f}" if m in speeds else "–"
        img_ratio = f"{speeds[m] / speeds[reference]:.2f}×" if m in speeds and reference in speeds else "–"
        mem = f"{saved[m]:.1f}" if m in saved else "–"
        mem_ratio = f"{saved[m] / saved[reference]:.2f}×" if m in saved and reference in saved else "–"
        lines.append(f"| {m} | {','.join(map(str, e['seeds']))} | {_cell(e, 'best_test_top1')} | "
                     f"{_cell(e, 'last_test_top1')} | {_cell(e, 'best_val_top1')} | {img} | {img_ratio} | {mem} | "
                     f"{mem_ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a protocol's results folder (holding summary.json)")
    parser.add_argument("--speed", type=Path, help="method_speed.py JSON for the same protocol")
    parser.add_argument("--memory", type=Path, help="bench_memory.py --protocol JSON for the same protocol")
    parser.add_argument("--out", type=Path, help="write the table here as well as printing it")
    args = parser.parse_args()
    summary_path = args.results / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: no {summary_path}; run `lakd bench <protocol> --summary-only` first")
    load = lambda p: json.loads(p.read_text()) if p else None  # noqa: E731
    text = table(json.loads(summary_path.read_text()), load(args.speed), load(args.memory))
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
