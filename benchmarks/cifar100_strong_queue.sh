#!/usr/bin/env bash
# The cifar100-strong campaign (issue 31), resumable across sessions and machines: teachers first, then the
# students in the order their answers are needed. Every step skips what is finished (a committed teacher file and
# its JSON; `lakd bench` skips runs whose result JSON exists) and resumes what was started (`--resume` from the
# run folder's last.pt). After each step the script re-executes itself from disk, so a newer version of this file
# (replaced with `mv`, never edited in place) takes over between steps.
#
# The code is pinned: every run computes with the worktree of commit $PIN (ec8e120), never with main, so refactoring
# on main cannot change the campaign half-way. Results go straight into this checkout (main) to be committed.
#   git worktree add ../c100tree ec8e120 && ln -s "$PWD/runs" ../c100tree/runs
#   bash benchmarks/inflight.sh restore          # a run stopped on another machine resumes where it stopped
#   . .venv/bin/activate   # any venv with torch and this project (e.g. pip install torch==2.13.0 -e .)
#   LAKD_DATA=$PWD/../shared/data setsid nohup bash benchmarks/cifar100_strong_queue.sh >> runs/c100-queue.log 2>&1 &
# Stop it with SIGTERM to its process group (the running `lakd` checkpoints before it exits), then
# `bash benchmarks/inflight.sh save` and commit benchmarks/inflight/ so the next machine resumes that run.
set -euo pipefail
main_repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="${CAMPAIGN_TREE:-$main_repo/../c100tree}"
PIN=ec8e120
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar100/ (e.g. ../shared/data)}"
export LAKD_DATA="$(cd "$LAKD_DATA" && pwd)"
[ "$(git -C "$tree" rev-parse --short=7 HEAD)" = "$PIN" ] || { echo "[queue] $tree is not at $PIN (see header)"; exit 1; }
export PYTHONPATH="$tree/src"
cd "$tree"
teachers_json="$main_repo/benchmarks/results/cifar100-strong-teachers"
mkdir -p "$teachers_json" runs/cifar100-strong
log() { echo "[queue] $(date -u +%Y-%m-%dT%H:%MZ) $*"; }
again() { log "step done; re-reading $0"; exec bash "$main_repo/benchmarks/cifar100_strong_queue.sh"; }

# teacher MODEL EPOCHS: `lakd train` with configs/cifar100_strong_teacher.yaml; the best-on-validation checkpoint,
# optimizer state stripped, becomes src/lakd/teachers/cifar100_MODEL_eEPOCHS.pt (weights-only, committed)
teacher() {
    local model=$1 epochs=$2 name="cifar100_$1_e$2"
    local out="runs/cifar100-strong/teacher-$model-e$epochs"
    local final="$main_repo/src/lakd/teachers/$name.pt" json="$teachers_json/teacher_${model}_e$epochs.json"
    if [ -f "$final" ] && [ -f "$json" ]; then return 0; fi
    if [ ! -f "$out/summary.json" ]; then
        local how=()
        if [ -f "$out/last.pt" ]; then how=(--resume); elif [ -e "$out" ]; then how=(--force); fi  # no checkpoint yet
        log "teacher $model $epochs epochs ${how[*]}"
        python -m lakd train -c configs/cifar100_strong_teacher.yaml --model "$model" --epochs "$epochs" \
            --out "$out" --no-progress "${how[@]}"
    fi
    python "$main_repo/benchmarks/collect_runs.py" "$json" "$out"
    python - "$out/best.pt" "$final" <<'PY'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save({k: ckpt[k] for k in ("model", "meta", "epoch", "best")}, sys.argv[2])
print(f"[queue] wrote {sys.argv[2]}: best {ckpt['best']}")
PY
    again
}

teacher resnet56 80
teacher vgg13 60
log "done"
