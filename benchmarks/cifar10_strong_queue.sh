#!/usr/bin/env bash
# The whole cifar10-strong comparison (issue 16), in the order its answers are needed, resumable: every step is a
# `lakd bench` call, which skips finished runs and resumes an interrupted one from its run folder. Run it again
# after any interruption (a new machine restarts only the unfinished run; finished runs are committed JSON).
#
#   LAKD_DATA=../shared/data setsid nohup bash benchmarks/cifar10_strong_queue.sh >> runs/queue.log 2>&1 &
#
# Every run of the comparison uses the code of one commit, 67a8b2f, so later changes (speed work, fixes elsewhere)
# cannot change what its runs compute or how fast they run. Run it from a worktree of that commit, sharing runs/:
#   git worktree add ../benchtree 67a8b2f && ln -s "$PWD/runs" ../benchtree/runs
#   cp -r benchmarks/results/cifar10-strong* ../benchtree/benchmarks/results/   # the finished runs: skipped
#   cp -r benchmarks/studies/results/. ../benchtree/benchmarks/studies/results/
#   bash benchmarks/inflight.sh restore   # a run stopped on another machine resumes where it stopped
#   git worktree add ../benchtree-crd 67a8b2f && git -C ../benchtree-crd cherry-pick 4b241c3   # for CRD (step 6a)
#   cd ../benchtree && PYTHONPATH=$PWD/src LAKD_DATA=/abs/path/to/data setsid nohup \
#       bash benchmarks/cifar10_strong_queue.sh >> runs/queue.log 2>&1 &
# and copy each new JSON of benchmarks/results/cifar10-strong*/ and benchmarks/studies/results/lakd-local-cifar10-strong/
# from the worktree into this checkout to commit it. Replace this script in a running worktree only by `mv` of a new
# file (bash reads a running script as it goes: an edit in place changes what it runs next).
#
# Stop it with SIGTERM to its process group (the running `lakd distill` checkpoints before it exits), then
# `bash benchmarks/inflight.sh save` and commit benchmarks/inflight/, so the next machine resumes that run.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar-10-batches-py (e.g. ../shared/data)}"
bench() { echo "[queue] $(date -u +%H:%M) lakd bench $*"; lakd bench "$@" --no-progress; }

# The order puts the answers that take least compute first: LAKD's seeds (they decide its default), the 3-epoch
# points, the first local-module study entries, the strongest baselines' seeds, the rest of the study (a winning
# variant needs its own seeds), and CRD last (its 16,384-negative recipe is ~6x the time of any other run).
strongest() {  # the three strongest baselines by mean validation top-1 among the runs finished so far
    python - <<'EOF'
import json
summary = json.load(open("benchmarks/results/cifar10-strong/summary.json"))
baselines = [m for m in summary["methods"] if not m["method"].startswith("lakd")]
baselines.sort(key=lambda m: -m["best_val_top1"]["mean"])
print(" ".join(m["method"] for m in baselines[:3]))
EOF
}
# 1. one seed of every method at the protocol's budget (15 epochs), all but vanilla and the slow CRD
bench cifar10-strong --seeds 0 --methods lakd-local lakd kd fitnet dkd reviewkd dist kd-ls at nd
# 2. seeds 1 and 2 of both LAKD variants: they decide LAKD's default (the rule in docs/studies/lakd-local-modules-cifar10-strong.md)
bench cifar10-strong --seeds 0 1 2 --methods lakd-local lakd
# 3. vanilla, and the short-budget point for the accuracy-vs-budget plot (the old protocol's 3 epochs)
bench cifar10-strong --seeds 0 --methods vanilla
bench cifar10-strong --epochs 3 --seeds 0 --methods kd fitnet dkd lakd lakd-local
# 4. LAKD's local modules: one local objective added per entry, selected on validation (the study's `local` is
#    the protocol's lakd-local run, compared from its JSON rather than trained twice). A local variant that wins
#    needs seeds of its own (step 6).
study() { bench benchmarks/studies/lakd_local_cifar10_strong.yaml --results-dir benchmarks/studies/results \
    --runs-dir runs/study "$@"; }
# On a machine without native bf16 (machine C: fp32, about 6x machine B's step time) a run takes 2-3 hours, so
# the order below puts what the comparison itself needs (the baselines' seeds) before the remaining study entries.
# Separate calls: `lakd bench` resumes a started run of the methods it is given before anything else.
study --seeds 0 --methods local-linear-aux local-kd
# 4b. a precision control: the comparison's runs span machines with native bf16 (precision=auto: bf16 autocast)
#     and without (auto: fp32). lakd-local seed 0 at the 3-epoch budget again, on a machine that trains in fp32,
#     against its bf16 run (cifar10-strong-e3/lakd-local-s0.json): what the precision alone moves, at a fifth of a
#     full run's cost. Only where auto means fp32.
if ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
    bench cifar10-strong --epochs 3 --seeds 0 --methods lakd-local --results-dir benchmarks/results/fp32-control \
        --runs-dir runs/fp32-control
fi
# 5. seeds 1 and 2 of the three strongest baselines by mean validation top-1
bench cifar10-strong --seeds 0 1 2 --methods $(strongest)
# 6. the other study entries (local-tail last: its teacher tail is recomputed and backpropagated through every
#    step, about 2.5x a lakd-local step; it was started on machine B and its checkpoint was lost with that
#    machine), then the rule written down before the study ran (docs/studies/lakd-local-modules-cifar10-strong.md): the local variant with the
#    highest seed-0 validation top-1 (lakd-local included) is the best local-module variant; if it is a study
#    entry, it gets seeds 1 and 2 as well
study --seeds 0 --methods local-teacher-inputs
study --seeds 0 --methods local-tail
# 6a. CRD's one seed (moved ahead of round 2 on 2026-12-02: the comparison needs it, round 2 is optional; the rule
#     below runs after every study entry either way). Seeds 1 and 2 for it too if it is then among the three
#     strongest (step 7; finished runs skip).
#     CRD runs the pinned code plus one change, 4b241c3 (its scores by one matmul against the whole bank: 5.4x
#     faster steps, the same values to float rounding; benchmarks/cifar10_strong_crd_check.sh), from a second
#     worktree whose src differs from the pin only in src/lakd/distill/crd.py, which no other method uses:
#       git worktree add ../benchtree-crd 67a8b2f && git -C ../benchtree-crd cherry-pick 4b241c3
crd_src="${LAKD_CRD_SRC:-$(pwd)/../benchtree-crd/src}"
grep -q '^DENSE_BANK_FACTOR' "$crd_src/lakd/distill/crd.py" || {
    echo "[queue] no CRD worktree with 4b241c3 at $crd_src (see step 6a of this script)"; exit 1; }
PYTHONPATH="$crd_src" bench cifar10-strong --seeds 0 --methods crd
# 6b. round 2 of the study (added 2026-12-02 before any of its runs): the short ramp, and the block split (NDAM and
#     feature losses at 6 depths); the same rule below picks among every entry's seed 0
study --seeds 0 --methods local-ramp-short local-block
best_local() {
    python - <<'PY'
import json
from pathlib import Path
# lakd-local as it was when the study ran (kept as lakd-local-own-inputs since the study replaced its settings)
vals = {"lakd-local": json.load(open("benchmarks/results/cifar10-strong/lakd-local-own-inputs-s0.json"))["best_val_top1"]}
for path in Path("benchmarks/studies/results/lakd-local-cifar10-strong").glob("*-s0.json"):
    vals[path.name[:-len("-s0.json")]] = json.load(open(path))["best_val_top1"]
best = max(vals, key=lambda m: vals[m])
print("" if best == "lakd-local" else best)
PY
}
best=$(best_local)
if [ -n "$best" ]; then study --seeds 0 1 2 --methods "$best"; fi
# 7. the final call: every seed of LAKD and the three strongest (CRD included if it is one); finished runs skip
PYTHONPATH="$crd_src" bench cifar10-strong --seeds 0 1 2 --methods lakd-local lakd $(strongest)
echo "[queue] $(date -u +%H:%M) done"
