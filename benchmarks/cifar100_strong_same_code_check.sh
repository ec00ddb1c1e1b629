#!/usr/bin/env bash
# Does main compute what the pinned cifar100-strong campaign computes (issue 31: checked before the final table)?
# For every method of a pair, the protocol's own `lakd distill` command (as the pinned code's `lakd bench --dry-run`
# prints it) cut to 4 steps (512 images, 1 epoch) runs with the pinned code ($pin) and with this checkout's, and the
# student weights are compared bit for bit. Prints one line per method; with OUT.json, also records the pair's
# verdicts there (the pair's entry replaced, the other pair's kept), with main's commit and src/ tree, the teacher
# file's sha256, the machine and the precision the runs used.
#
#   LAKD_DATA=../shared/data bash benchmarks/cifar100_strong_same_code_check.sh TEACHER.pt [PAIR [OUT.json]]
#
# TEACHER: any CIFAR-100 checkpoint of the pair's teacher architecture (the campaign's own, or one in training:
# the check compares code, not accuracy). PAIR: resnet56_resnet20 (default) or vgg13_mobilenetv2. The campaign's
# queue runs it for both pairs at its end, into benchmarks/results/cifar100_strong_same_code_check.json, whenever
# main's committed src/ differs from the one last checked. ENTRIES="kd lakd_local ..." checks only those entries
# (the labels the script prints; a partial check is recorded with "complete": false, and the queue redoes it).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar-100-python (e.g. ../shared/data)}"
export LAKD_DATA="$(cd "$LAKD_DATA" && pwd)"
teacher_given="${1:?give a teacher checkpoint}"
pair="${2:-resnet56_resnet20}"
out_json="${3:-}"
[ -z "$out_json" ] || out_json="$(cd "$(dirname "$out_json")" && pwd)/$(basename "$out_json")"
pin=ef772e1  # the commit every run of the cifar100-strong campaign computes with
scratch="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$scratch/wt-pin" 2>/dev/null || true; rm -rf "$scratch"' EXIT
cp "$teacher_given" "$scratch/teacher.pt"  # a teacher still in training keeps rewriting its file
git -C "$repo" worktree add -q --detach "$scratch/wt-pin" "$pin"
cd "$scratch/wt-pin"
PYTHONPATH="$scratch/wt-pin/src" python -m lakd bench cifar100-strong --pairs "$pair" --seeds 0 --dry-run \
    --runs-dir "$scratch/plan" --results-dir "$scratch/plan" --no-progress | sed -n 's/^ *[a-z]* *lakd distill /distill /p' \
    > "$scratch/commands"
while read -r line; do
  eval "set -- $line"  # the printed command, quoted by shlex
  method=$(printf '%s\n' "$@" | grep -A1 -x -- '-c' | grep -o 'configs/methods/[a-z_]*' | sed 's|configs/methods/||')
  label="${method:-unknown}$(printf '%s\n' "$@" | grep -q 'temperature=3.0' && echo '-T3' || true)"
  [ -z "${ENTRIES:-}" ] || [[ " $ENTRIES " == *" $label "* ]] || continue
  for side in pin main; do
    src="$scratch/wt-pin/src"; [ "$side" = main ] && src="$repo/src"
    PYTHONPATH="$src" python -m lakd "$@" --teacher "$scratch/teacher.pt" --epochs 1 --force \
        --out "$scratch/out-$label-$side" data.train_limit=512 data.test_limit=200 train.eval_test=false \
        > "$scratch/out-$label-$side.log" 2>&1 || { echo "$label ($side): failed, see below"; tail -3 \
        "$scratch/out-$label-$side.log"; }
  done
  python - "$scratch/out-$label-pin/last.pt" "$scratch/out-$label-main/last.pt" "$label" "$pin" \
      "$scratch/out-$label-main.log" >> "$scratch/rows.jsonl" <<'EOF'
import json
import re
import sys
from pathlib import Path

import torch

label, pin = sys.argv[3], sys.argv[4]
log = Path(sys.argv[5])
run_line = re.search(r" on \w+, (\w+), ", log.read_text()) if log.exists() else None  # "on cpu, fp32, channels_last"
row = {"entry": label, "pin": pin, "precision": run_line.group(1) if run_line else None}
try:
    a, b = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in sys.argv[1:3])
except FileNotFoundError as exc:
    print(f"{label}: no checkpoint ({exc.filename})", file=sys.stderr)
    print(json.dumps({**row, "verdict": "failed", "max_abs_diff": None}))
    raise SystemExit(0)
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b)
print(f"{label}: main vs {pin}: student weights after 4 steps "
      f"{'bit-identical' if same else 'DIFFER'} (max abs diff {diff})", file=sys.stderr, flush=True)
print(json.dumps({**row, "verdict": "bit-identical" if same else "differ", "max_abs_diff": diff}))
EOF
done < "$scratch/commands"
[ -z "$out_json" ] || python - "$out_json" "$pair" "$scratch/rows.jsonl" "$scratch/teacher.pt" "$teacher_given" \
    "$(git -C "$repo" rev-parse --short=7 HEAD)" "$(git -C "$repo" rev-parse HEAD:src)" \
    "$(git -C "$repo" status --porcelain -- src | wc -l)" "$pin" <<'EOF'
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

out, pair, rows, teacher, teacher_given, main, main_src, dirty, pin = sys.argv[1:]
cpuinfo = Path("/proc/cpuinfo").read_text()
cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
bf16 = "+".join(f for f in ("avx512_bf16", "amx_bf16") if f in cpuinfo.split()) or "no native bf16"
record = json.loads(Path(out).read_text()) if Path(out).exists() else {}
record["what"] = "student weights after 4 steps (512 images, 1 epoch) of each entry's protocol command, main vs pin"
record["command"] = "LAKD_DATA=../shared/data bash benchmarks/cifar100_strong_same_code_check.sh TEACHER.pt PAIR OUT.json"
record.setdefault("pairs", {})[pair] = {
    "main": main, "main_src": main_src, "main_src_uncommitted_files": int(dirty), "pin": pin,
    "complete": not os.environ.get("ENTRIES"),
    "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    "teacher": {"file": teacher_given, "sha256": hashlib.sha256(Path(teacher).read_bytes()).hexdigest()},
    "machine": f"{os.cpu_count()}-core {cpu} ({bf16}), torch {torch.__version__}",
    "rows": [json.loads(line) for line in Path(rows).read_text().splitlines()],
}
tmp = Path(out).with_suffix(".tmp")
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(out)
rows = record["pairs"][pair]["rows"]
print(f"{pair}: {sum(r['verdict'] == 'bit-identical' for r in rows)}/{len(rows)} bit-identical -> {out}")
EOF
