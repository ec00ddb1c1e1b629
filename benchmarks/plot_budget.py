"""Accuracy vs budget: test top-1 of some methods at several epoch budgets of one protocol, as one plot.

Reads the result JSONs `lakd bench` wrote for the protocol at its own budget (``<results>/<protocol>/``) and at
other budgets (``<results>/<protocol>-eN/``, from ``lakd bench PROTOCOL --epochs N``), takes the best-on-validation
test top-1 of each (method, budget) — mean and sample std over the seeds present — and plots one line per method.

Run:  python benchmarks/plot_budget.py cifar10-strong --methods kd reviewkd lakd [--results-dir benchmarks/results]
          [--out docs/img/accuracy_vs_budget_cifar10_strong.png]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from lakd.atomic import atomic_write


def collect(results_dir: Path, protocol: str, methods: list[str]) -> dict[str, dict[int, list[float]]]:
    """``{method: {epochs: [best-on-val test top-1 per seed]}}`` from every budget folder of ``protocol``."""
    found: dict[str, dict[int, list[float]]] = {m: {} for m in methods}
    pattern = re.compile(rf"^{re.escape(protocol)}(-e(\d+))?$")
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and pattern.match(p.name)):
        for method in methods:
            for path in sorted(folder.glob(f"{method}-s*.json")):
                if not re.fullmatch(rf"{re.escape(method)}-s\d+\.json", path.name):
                    continue
                record = json.loads(path.read_text())
                epochs = len(record.get("epochs") or [])
                if record.get("best_test_top1") is not None and epochs:
                    found[method].setdefault(epochs, []).append(float(record["best_test_top1"]))
    return found


def summarise(found: dict[str, dict[int, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for method, budgets in found.items():
        for epochs, values in sorted(budgets.items()):
            rows.append({"method": method, "epochs": epochs, "seeds": len(values), "mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else None})
    return rows


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=100)
    ax = fig.subplots()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.errorbar([r["epochs"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] or 0.0 for r in mine],
                    marker="o", capsize=3, label=method)
    ax.set(xlabel="student epochs", ylabel="test top-1 at best val epoch (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = summarise(collect(args.results_dir, args.protocol, args.methods))
    if not rows:
        raise SystemExit(f"no results for {args.methods} under {args.results_dir}/{args.protocol}[-eN]/")
    for r in rows:
        std = f" ± {r['std']:.2f}" if r["std"] is not None else ""
        print(f"{r['method']:>12}  {r['epochs']:>3} epochs  {r['mean']:.2f}{std}  ({r['seeds']} seeds)")
    out = args.out or Path("docs/img") / f"accuracy_vs_budget_{args.protocol.replace('-', '_')}.png"
    plot(rows, out, f"{args.protocol}: accuracy vs student budget")
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
