#!/usr/bin/env bash
# Does main compute what the pinned cifar100-strong campaign computes (issue 31: checked before the final table)?
# For every method of a pair, the protocol's own `lakd distill` command (as the pinned code's `lakd bench --dry-run`
# prints it) cut to 4 steps (512 images, 1 epoch) runs with the pinned code ($pin) and with this checkout's, and the
# student weights are compared bit for bit. Prints one line per method.
#
#   LAKD_DATA=../shared/data bash benchmarks/cifar100_strong_same_code_check.sh TEACHER.pt [PAIR]
#
# TEACHER: any CIFAR-100 checkpoint of the pair's teacher architecture (the campaign's own, or one in training:
# the check compares code, not accuracy). PAIR: resnet56_resnet20 (default) or vgg13_mobilenetv2.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar-100-python (e.g. ../shared/data)}"
export LAKD_DATA="$(cd "$LAKD_DATA" && pwd)"
teacher_given="${1:?give a teacher checkpoint}"
pair="${2:-resnet56_resnet20}"
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
  for side in pin main; do
    src="$scratch/wt-pin/src"; [ "$side" = main ] && src="$repo/src"
    PYTHONPATH="$src" python -m lakd "$@" --teacher "$scratch/teacher.pt" --epochs 1 --force \
        --out "$scratch/out-$label-$side" data.train_limit=512 data.test_limit=200 train.eval_test=false \
        > "$scratch/out-$label-$side.log" 2>&1 || { echo "$label ($side): failed, see below"; tail -3 \
        "$scratch/out-$label-$side.log"; }
  done
  python - "$scratch/out-$label-pin/last.pt" "$scratch/out-$label-main/last.pt" "$label" "$pin" <<'EOF'
import sys

import torch

try:
    a, b = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in sys.argv[1:3])
except FileNotFoundError as exc:
    print(f"{sys.argv[3]}: no checkpoint ({exc.filename})")
    raise SystemExit(0)
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b)
print(f"{sys.argv[3]}: main vs {sys.argv[4]}: student weights after 4 steps "
      f"{'bit-identical' if same else 'DIFFER'} (max abs diff {diff})", flush=True)
EOF
done < "$scratch/commands"
