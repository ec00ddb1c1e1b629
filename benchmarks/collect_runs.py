"""Collect finished run folders into one JSON file (config, command, environment, per-epoch metrics, summary).

Usage: python benchmarks/collect_runs.py OUT.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def collect(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"run": str(run_dir), "summary": summary, "epochs": rows}


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    runs = [collect(Path(d)) for d in sys.argv[2:]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs}, indent=2))
    for r in runs:
        s = r["summary"]
        print(f"{r['run']}: last test {s['last_test_top1']:.2f}  best-val epoch {s['best_epoch']} "
              f"(test {s['best_test_top1']:.2f})  {s['train_img_per_s']:.0f} img/s  peak {s['peak_mem_mb']:.0f} MB  "
              f"{s['train_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
