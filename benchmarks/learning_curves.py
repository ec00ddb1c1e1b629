"""How fast each method learns: the per-epoch metric of a protocol's runs, averaged over the seeds that exist.

A final-accuracy table says who ends ahead, not how they got there; this reads the ``epochs`` history that every
result JSON of ``lakd bench`` keeps and prints a markdown table (method, seeds, the metric at chosen epochs), so
that "starts slower and catches up" or "leads early, is caught" is read from the committed runs, not from a plot.

Run:  python benchmarks/learning_curves.py benchmarks/results/cifar100-strong/resnet56_resnet20 \\
          --methods lakd nd reviewkd --epochs 1 3 5 10 15 [--metric val_top1] [--seeds 0]
Several folders may be given (a protocol's and a study's of the same pair): a method found in two is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

RESULT_NAME = re.compile(r"(?P<method>.+)-s(?P<seed>\d+)\.json")


def load_histories(folder: Path, methods: list[str] | None,
                   seeds: list[int] | None = None) -> dict[str, dict[int, list[dict]]]:
    """``{method: {seed: epochs}}`` from the folder's ``<method>-s<seed>.json`` files (summary files are skipped),
    only ``seeds`` where given."""
    out: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(folder.glob("*-s*.json")):
        match = RESULT_NAME.fullmatch(path.name)
        if not match or (methods and match["method"] not in methods) or (seeds and int(match["seed"]) not in seeds):
            continue
        epochs = json.loads(path.read_text()).get("epochs")
        if not isinstance(epochs, list) or not epochs:
            raise ValueError(f"{path}: no 'epochs' history (is it a `lakd bench` result JSON?)")
        out.setdefault(match["method"], {})[int(match["seed"])] = epochs
    return out


def curve_table(histories: dict[str, dict[int, list[dict]]], epochs: list[int], metric: str,
                order: list[str] | None = None) -> str:
    """A markdown table: the seed mean of ``metric`` at each epoch (1-based); '–' where a run has no such epoch."""
    lines = [f"| method | seeds | {' | '.join(f'epoch {e}' for e in epochs)} |",
             f"|---|---|{'---|' * len(epochs)}"]
    for method in order or sorted(histories):
        runs = histories.get(method)
        if not runs:
            continue
        cells = []
        for epoch in epochs:
            values = [run[epoch - 1].get(metric) for run in runs.values() if len(run) >= epoch]
            ok = len(values) == len(runs) and all(isinstance(v, (int, float)) for v in values)
            cells.append(f"{statistics.fmean(values):.1f}" if ok else "–")
        lines.append(f"| {method} | {','.join(map(str, sorted(runs)))} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+",
                        help="a protocol's (or a pair's) results folder; several: their methods side by side")
    parser.add_argument("--methods", nargs="+", help="these methods, in this order (default: all, by name)")
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 3, 5, 10, 15], help="1-based epochs to show")
    parser.add_argument("--metric", default="val_top1", help="a per-epoch key of the history (default val_top1)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every seed there is)")
    args = parser.parse_args(argv)
    for folder in args.results:
        if not folder.is_dir():
            print(f"error: results folder '{folder}' does not exist; give the folder holding <method>-s<seed>.json",
                  file=sys.stderr)
            return 2
    if any(e < 1 for e in args.epochs):
        print(f"error: --epochs are 1-based, got {args.epochs}", file=sys.stderr)
        return 2
    histories: dict[str, dict[int, list[dict]]] = {}
    try:
        for folder in args.results:
            for method, runs in load_histories(folder, args.methods, args.seeds).items():
                if method in histories:
                    raise ValueError(f"'{method}' has results in more than one of the folders given ({folder}); "
                                     "give one folder per method")
                histories[method] = runs
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [m for m in args.methods or [] if m not in histories]
    if missing or not histories:
        where = ", ".join(f"'{f}'" for f in args.results)
        seeds = f" (seeds {' '.join(map(str, args.seeds))})" if args.seeds else ""
        print(f"error: no result JSON in {where}{seeds} for {', '.join(missing) or 'any method'}", file=sys.stderr)
        return 2
    print(curve_table(histories, args.epochs, args.metric, args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
