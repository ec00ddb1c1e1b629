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

Run:  python benchmarks/cifar100_strong_study.py behind resnet56_resnet20
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MAIN = ROOT / "results" / "cifar100-strong"
STUDY = ROOT / "studies" / "results" / "lakd-parts-cifar100"
STUDY_PAIR = "resnet56_resnet20"
MARGIN = 0.5
SEEDS = (0, 1, 2)
VARIANTS = ("lakd-no-ndam", "lakd-no-feat", "lakd-no-ramp", "lakd-logit-kd")
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


def behind(pair: str) -> int:
    folder = MAIN / pair
    lakd = _mean(folder, "lakd", "best_test_top1")
    entries = {p.name[: -len("-s0.json")] for p in folder.glob("*-s0.json")} - set(NOT_BASELINES)
    seeded = {e: m for e in sorted(entries) if (m := _mean(folder, e, "best_test_top1")) is not None}
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["behind"] and len(argv) == 2:
        return behind(argv[1])
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
