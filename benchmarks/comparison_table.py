"""The comparison table of one protocol: accuracy from its runs, speed and memory from clean measurements.

A run's own img/s and peak memory (in ``lakd bench``'s summary) depend on what else shared the machine while it
trained, so this table takes accuracy from the protocol's result JSONs (``lakd bench ... --summary-only`` writes
``summary.json``) and puts beside it img/s and peak process memory measured back to back
(``benchmarks/method_speed.py``) and the activations each method holds for backward
(``benchmarks/bench_memory.py --protocol``).

Several ``--speed`` files may be given: a method's speed comes from the last file that measured it, and its ratio
to KD from that same file (paired by round where the file has paired ratios), since img/s of two measurements are
not comparable on a machine whose speed drifts; rows from a later file are marked and the file named below (the
reference's own row stays the first file's).

Run:  python benchmarks/comparison_table.py benchmarks/results/cifar10-strong \\
          --speed benchmarks/results/method_speed_cifar10-strong.json [more.json ...] \\
          --memory benchmarks/results/memory_cifar10-strong.json [more.json ...] [--out table.md]
A protocol with pairs has one results folder a pair (``benchmarks/results/cifar100-strong/resnet56_resnet20``); its
speed files key methods ``<pair>/<method>`` and the folder's name picks the pair's (or ``--pair``).
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


Speed = tuple[float, float | None, float | None, int]


def _of_pair(entries: dict[str, Any], pair: str | None) -> dict[str, Any]:
    """A protocol with pairs keys its measurements ``<pair>/<method>``: the given pair's, by method name."""
    if pair is None:
        return entries
    return {key.split("/", 1)[1]: value for key, value in entries.items() if key.startswith(f"{pair}/")}


def speeds_from(files: list[tuple[str, dict[str, Any]]], reference: str, pair: str | None = None) -> dict[str, Speed]:
    """method -> (img/s, speed relative to ``reference`` in the same file, peak resident MB, index of the file):
    the last file that measured a method wins, except for ``reference`` itself, whose row stays the first file's.
    With ``pair``, only that pair's measurements of a protocol with pairs count."""
    out: dict[str, Speed] = {}
    for index, (_, data) in enumerate(files):
        ok = {m: r for m, r in _of_pair(data.get("methods", {}), pair).items() if r.get("status") == "ok"}
        paired = _of_pair((data.get("paired_speed") or {}).get("ratios", {}), pair)
        for m, run in ok.items():
            if m == reference and m in out:
                continue
            img = run["img_per_s"]
            if m in paired and reference in paired:  # paired ratios are to the file's base: make them to ours
                ratio: float | None = paired[m] / paired[reference]
            else:
                ratio = img / ok[reference]["img_per_s"] if reference in ok else None
            out[m] = (img, ratio, run.get("peak_mem_mb"), index)
    return out


def table(summary: dict[str, Any], speed: dict[str, Any] | list[tuple[str, dict[str, Any]]] | None,
          memory: dict[str, Any] | list[dict[str, Any]] | None, reference: str = "kd", pair: str | None = None) -> str:
    """Markdown rows sorted by mean validation top-1 (the selection criterion), best first. Several memory files:
    a method's count comes from the last that measured it (saved-tensor counts are exact, so files compare).
    ``pair``: the pair whose speed measurements count, for a protocol with pairs (memory files hold one pair)."""
    files = speed if isinstance(speed, list) else [("speed", speed)] if speed else []
    speeds = speeds_from(files, reference, pair)
    memories = memory if isinstance(memory, list) else [memory] if memory else []
    saved = {m: r["saved_peak_mb"] for data in memories for m, r in data.get("results", {}).items()}
    lines = ["| method | seeds | test top-1 at best val | last-epoch test | val top-1 | img/s | vs KD | peak MB | "
             "saved for backward (MB) | vs KD |", "|---|---|---|---|---|---|---|---|---|---|"]
    methods = sorted(summary["methods"], key=lambda e: -e["best_val_top1"]["mean"])
    for e in methods:
        m = e["method"]
        img, img_ratio, peak = "–", "–", "–"
        if m in speeds:
            value, ratio, peak_mb, index = speeds[m]
            mark = "†" * index
            img = f"{value:.0f}{mark}"
            img_ratio = f"{ratio:.2f}×{mark}" if ratio is not None else "–"
            peak = f"{peak_mb:.0f}{mark}" if peak_mb is not None else "–"
        mem = f"{saved[m]:.1f}" if m in saved else "–"
        mem_ratio = f"{saved[m] / saved[reference]:.2f}×" if m in saved and reference in saved else "–"
        lines.append(f"| {m} | {','.join(map(str, e['seeds']))} | {_cell(e, 'best_test_top1')} | "
                     f"{_cell(e, 'last_test_top1')} | {_cell(e, 'best_val_top1')} | {img} | {img_ratio} | {peak} | "
                     f"{mem} | {mem_ratio} |")
    used = {speeds[e["method"]][3] for e in methods if e["method"] in speeds}  # files behind the rows shown
    notes = [f"{'†' * i} speed from `{name}`, relative to its own KD (img/s of two measurements do not compare)"
             for i, (name, _) in enumerate(files) if i and i in used]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a protocol's results folder (holding summary.json)")
    parser.add_argument("--speed", type=Path, nargs="+", default=[],
                        help="method_speed.py JSON(s) for the same protocol; later files override earlier ones")
    parser.add_argument("--memory", type=Path, nargs="+", default=[],
                        help="bench_memory.py --protocol JSON(s) for the same protocol; later files override earlier")
    parser.add_argument("--out", type=Path, help="write the table here as well as printing it")
    parser.add_argument("--pair", help="for a protocol with pairs: the pair whose speed measurements count "
                        "(default: the results folder's name when the speed files key methods <pair>/<method>)")
    args = parser.parse_args()
    summary_path = args.results / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: no {summary_path}; run `lakd bench <protocol> --summary-only` first")
    load = lambda p: json.loads(p.read_text()) if p else None  # noqa: E731
    speed = [(str(p), load(p)) for p in args.speed]
    pair = args.pair
    if pair is None and any("/" in key for _, data in speed for key in data.get("methods", {})):
        pair = args.results.resolve().name
    text = table(json.loads(summary_path.read_text()), speed, [load(p) for p in args.memory], pair=pair)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
