"""Issue 31, item 5: the pre-registered decisions of the LAKD parts study, read from committed result JSONs only.

The rules were written in docs/benchmarks-cifar100.md ("Item 5, written before any CIFAR-100 student ran") before a
single CIFAR-100 student result existed; this script applies them and nothing else, so the queue
(benchmarks/cifar100_strong_queue.sh) can act on them without a person choosing after seeing numbers:

  behind PAIR   exit 0 (and say why) when frozen `lakd` is NOT >= 0.5 test points above the best baseline on PAIR
                (3 seeds, mean against mean, the baselines that have 3 seeds: the three strongest by seed-0
                validation); exit 1 when it is ahead; exit 2 when PAIR's seeds are not all in yet
  carried       the study variants whose seed-0 validation top-1 on the ResNet pair is >= 0.5 above frozen `lakd`'s
                seed 0 (they go on to seeds 1-2)
  confirmed     the carried variants whose 3-seed validation mean on the ResNet pair is >= 0.5 above frozen `lakd`'s
                (they run untouched, 3 seeds, on the VGG pair; a default changes only if their test mean there is
                not below frozen `lakd`'s: that last comparison is reported in the docs, not taken here)
  report        the study so far as a markdown table: each variant's validation (seed 0, and its 3-seed mean when
                it has one) against frozen `lakd`'s, the difference, and what the rules make of it; test beside it,
                never used; and the precision each run trained in (bf16 or fp32: the machines differ)
  targets PAIR  item 4's two targets on PAIR, stated plainly from the same JSONs (nothing is decided by it):
                frozen `lakd` >= the best 3-seed baseline + 0.5 (test means), and `lakd-local` within 0.5 of `lakd`
                (test means) at <= 0.6x its activations saved for backward
                (benchmarks/results/memory_cifar100-strong_PAIR.json)

Run:  python benchmarks/cifar100_strong_study.py behind resnet56_resnet20
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MAIN = ROOT / "results" / "cifar100-strong"
MEMORY = ROOT / "results" / "memory_cifar100-strong_{pair}.json"
STUDY = ROOT / "studies" / "results" / "lakd-parts-cifar100"
STUDY_PAIR = "resnet56_resnet20"
MARGIN = 0.5
LOCAL_WITHIN = 0.5  # item 4: lakd-local within 0.5 points of lakd ...
LOCAL_MEMORY = 0.6  # ... at <= 0.6x its activation memory
SEEDS = (0, 1, 2)
VARIANTS = ("lakd-no-ndam", "lakd-no-feat", "lakd-no-ramp", "lakd-logit-kd")
PRECISION_CONTROL = "lakd-fp32-control"  # frozen `lakd` trained in fp32: reported beside the variants, decides nothing
NOT_BASELINES = ("lakd", "lakd-local")


def _metric(folder: Path, entry: str, seed: int, key: str) -> float | None:
    path = folder / f"{entry}-s{seed}.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get(key)
    return float(value) if value is not None else None


def _mean(folder: Path, entry: str, key: str) -> float | None:
    values = [_metric(folder, entry, s, key) for s in SEEDS]
    return statistics.fmean(values) if all(v is not None for v in values) else None  # type: ignore[arg-type]


def _seeded_baselines(folder: Path) -> dict[str, float]:
    """3-seed test means of the baselines that have all three seeds (the three strongest by seed-0 validation)."""
    entries = {p.name[: -len("-s0.json")] for p in folder.glob("*-s0.json")} - set(NOT_BASELINES)
    return {e: m for e in sorted(entries) if (m := _mean(folder, e, "best_test_top1")) is not None}


def _precision(folder: Path, entry: str) -> str:
    """What each seed trained in (bf16 autocast or fp32: `environment.device`), since the campaign spans machines
    with and without native bf16 and a reader must see when a comparison crosses them."""
    seen: dict[str, list[str]] = {}
    for seed in SEEDS:
        path = folder / f"{entry}-s{seed}.json"
        if path.is_file():
            device = str(json.loads(path.read_text()).get("environment", {}).get("device", ""))
            kind = next((k for k in ("bf16", "fp16", "fp32") if k in device.split(", ")), "unrecorded")
            seen.setdefault(kind, []).append(f"s{seed}")
    if len(seen) == 1:
        return next(iter(seen))
    return ", ".join(f"{kind} ({' '.join(seeds)})" for kind, seeds in seen.items())


def _mean_std(folder: Path, entry: str) -> str:
    values = [v for s in SEEDS if (v := _metric(folder, entry, s, "best_test_top1")) is not None]
    if not values:
        return "no seeds"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{spread} ({len(values)} seed{'s' if len(values) > 1 else ''})"


def targets(pair: str) -> int:
    """Print item 4's targets on PAIR; exit 2 while seeds are missing, else 0 (met or not: this reports)."""
    folder = MAIN / pair
    lakd, local = _mean(folder, "lakd", "best_test_top1"), _mean(folder, "lakd-local", "best_test_top1")
    seeded = _seeded_baselines(folder)
    if lakd is None or local is None or len(seeded) < 3:
        print(f"{pair}: not all seeds are in yet")
        return 2
    best = max(seeded, key=lambda e: seeded[e])
    gap = lakd - seeded[best]
    print(f"{pair}, test top-1 at best validation (mean ± std over seeds {', '.join(map(str, SEEDS))}):")
    print(f"  lakd {_mean_std(folder, 'lakd')}, best baseline {best} {_mean_std(folder, best)}: {gap:+.2f} "
          f"-> target lakd >= best + {MARGIN}: {'met' if gap >= MARGIN else f'missed by {MARGIN - gap:.2f}'}")
    local_gap = local - lakd
    memory_file = Path(str(MEMORY).format(pair=pair))
    ratio = None
    if memory_file.is_file():
        results = json.loads(memory_file.read_text())["results"]
        ratio = results["lakd-local"]["saved_peak_mb"] / results["lakd"]["saved_peak_mb"]
    memory = f"{ratio:.2f}x lakd's activations for backward" if ratio is not None else "memory not measured"
    met = local_gap >= -LOCAL_WITHIN and ratio is not None and ratio <= LOCAL_MEMORY
    print(f"  lakd-local {_mean_std(folder, 'lakd-local')}: {local_gap:+.2f} against lakd, at {memory} "
          f"-> target within {LOCAL_WITHIN} at <= {LOCAL_MEMORY}x: {'met' if met else 'missed'}")
    return 0


def behind(pair: str) -> int:
    folder = MAIN / pair
    lakd = _mean(folder, "lakd", "best_test_top1")
    seeded = _seeded_baselines(folder)
    if lakd is None or len(seeded) < 3:
        print(f"{pair}: not all seeds are in yet (lakd 3 seeds: {lakd is not None}; baselines with 3 seeds: "
              f"{', '.join(seeded) or 'none'})")
        return 2
    best = max(seeded, key=lambda e: seeded[e])
    gap = lakd - seeded[best]
    verdict = "ahead" if gap >= MARGIN else "NOT ahead"
    print(f"{pair}: lakd {lakd:.2f} vs best baseline {best} {seeded[best]:.2f} (3-seed test means): "
          f"{gap:+.2f}, {verdict} by the >= {MARGIN} rule")
    return 1 if gap >= MARGIN else 0


def carried() -> list[str]:
    frozen = _metric(MAIN / STUDY_PAIR, "lakd", 0, "best_val_top1")
    if frozen is None:
        return []
    out = []
    for v in VARIANTS:
        val = _metric(STUDY / STUDY_PAIR, v, 0, "best_val_top1")
        if val is not None and val >= frozen + MARGIN:
            out.append(v)
    return out


def confirmed() -> list[str]:
    frozen = _mean(MAIN / STUDY_PAIR, "lakd", "best_val_top1")
    if frozen is None:
        return []
    return [v for v in carried() if (m := _mean(STUDY / STUDY_PAIR, v, "best_val_top1")) is not None
            and m >= frozen + MARGIN]


def report() -> str:
    """The study's table: validation decides (seed 0 for `carried`, 3-seed mean for `confirmed`), test is reported."""
    main = MAIN / STUDY_PAIR
    frozen0, frozen_mean = _metric(main, "lakd", 0, "best_val_top1"), _mean(main, "lakd", "best_val_top1")
    if frozen0 is None:
        return f"{STUDY_PAIR}: frozen lakd's seed 0 is not in yet"
    columns = ("entry", "seed-0 val", "vs frozen", "3-seed val", "vs frozen", "test at best val (seeds)", "trained in",
               "rule")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    frozen_mean_cell = f"{frozen_mean:.2f}" if frozen_mean is not None else "–"
    lines.append(f"| lakd (frozen) | {frozen0:.2f} | | {frozen_mean_cell} | | {_mean_std(main, 'lakd')} | "
                 f"{_precision(main, 'lakd')} | |")
    carried_now, confirmed_now = carried(), confirmed()
    folder = STUDY / STUDY_PAIR
    for variant in VARIANTS:
        val0 = _metric(folder, variant, 0, "best_val_top1")
        if val0 is None:
            lines.append(f"| {variant} | not run yet | | | | | | |")
            continue
        mean = _mean(folder, variant, "best_val_top1")
        mean_cells = (f"{mean:.2f} | {mean - frozen_mean:+.2f}" if mean is not None and frozen_mean is not None
                      else "– | ")
        if variant in confirmed_now:
            rule = "confirmed: runs on the VGG pair"
        elif variant not in carried_now:
            rule = f"not carried (needs >= {frozen0 + MARGIN:.2f})"
        elif mean is None:
            rule = "carried: seeds 1-2"
        else:
            rule = f"not confirmed (needs a mean >= {frozen_mean + MARGIN:.2f})"  # type: ignore[operator]
        lines.append(f"| {variant} | {val0:.2f} | {val0 - frozen0:+.2f} | {mean_cells} | "
                     f"{_mean_std(folder, variant)} | {_precision(folder, variant)} | {rule} |")
    control = _metric(folder, PRECISION_CONTROL, 0, "best_val_top1")
    if control is not None:
        lines.append(f"| {PRECISION_CONTROL} | {control:.2f} | {control - frozen0:+.2f} | | | "
                     f"{_mean_std(folder, PRECISION_CONTROL)} | {_precision(folder, PRECISION_CONTROL)} | "
                     "control: decides nothing |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["behind"] and len(argv) == 2:
        return behind(argv[1])
    if argv[:1] == ["targets"] and len(argv) == 2:
        return targets(argv[1])
    if argv == ["report"]:
        print(report())
        return 0
    if argv == ["carried"]:
        print(" ".join(carried()))
        return 0
    if argv == ["confirmed"]:
        print(" ".join(confirmed()))
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
