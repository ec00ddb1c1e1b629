#!/usr/bin/env bash
# The cifar100-strong campaign (issue 31), resumable across sessions and machines: teachers first, then the
# students in the order their answers are needed. Every step skips what is finished (a committed teacher file and
# its JSON; `lakd bench` skips runs whose result JSON exists) and resumes what was started (`--resume` from the
# run folder's last.pt). After each step the script re-executes itself from disk, so a newer version of this file
# (replaced with `mv`, never edited in place) takes over between steps: after every run it made (a run it skips
# costs a file test, so starting again from the top is cheap).
#
# The code is pinned: every run computes with the worktree of commit $PIN (ef772e1), never with main, so refactoring
# on main cannot change the campaign half-way. (The resnet56 teacher started at ec8e120, whose src differs from
# ef772e1 only in configs and in bench.py's protocol reader: `git diff --stat ec8e120 ef772e1 -- src`.) Results go
# straight into this checkout (main) to be committed.
#   git worktree add ../c100tree ef772e1 && ln -s "$PWD/runs" ../c100tree/runs
#   bash benchmarks/inflight.sh restore          # a run stopped on another machine resumes where it stopped
#   . .venv/bin/activate   # any venv with torch and this project (e.g. pip install torch==2.13.0 -e .)
#   LAKD_DATA=$PWD/../shared/data setsid nohup bash benchmarks/cifar100_strong_queue.sh >> runs/c100-queue.log 2>&1 &
# Stop it with SIGTERM to its process group (the running `lakd` checkpoints before it exits), then
# `bash benchmarks/inflight.sh save` and commit benchmarks/inflight/ so the next machine resumes that run.
set -euo pipefail
main_repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="${CAMPAIGN_TREE:-$main_repo/../c100tree}"
PIN=ef772e1
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar100/ (e.g. ../shared/data)}"
export LAKD_DATA="$(cd "$LAKD_DATA" && pwd)"
[ "$(git -C "$tree" rev-parse --short=7 HEAD)" = "$PIN" ] || { echo "[queue] $tree is not at $PIN (see header)"; exit 1; }
export PYTHONPATH="$tree/src"
cd "$tree"
teachers_json="$main_repo/benchmarks/results/cifar100-strong-teachers"
segments="$main_repo/benchmarks/results/cifar100_strong_segments.jsonl"  # where each run started (segment below)
mkdir -p "$teachers_json" runs/cifar100-strong
log() { echo "[queue] $(date -u +%Y-%m-%dT%H:%MZ) $*"; }
# commit_results MESSAGE: every new result (teachers, result JSON, tables) committed as it arrives, and nothing
# else (`git commit -- PATHS` leaves whatever else is staged in main alone); a failure (a busy index) only waits
# for the next result's commit
commit_results() {
    local paths=(benchmarks/results/cifar100-strong benchmarks/results/cifar100-strong-teachers src/lakd/teachers
                 benchmarks/studies/results/lakd-parts-cifar100 benchmarks/results/cifar100_strong_same_code_check.json
                 "${segments#"$main_repo"/}")
    local path present=()
    for path in "${paths[@]}"; do  # a missing path would fail the whole add and commit (pathspec did not match)
        [ -e "$main_repo/$path" ] && present+=("$path")
    done
    paths=("${present[@]}")
    git -C "$main_repo" add -- "${paths[@]}" 2>/dev/null || true
    git -C "$main_repo" commit -q -m "cifar100-strong: $1" -- "${paths[@]}" 2>/dev/null && log "committed: $1" || true
}
# segment WHAT RUN_DIR: one line in $segments each time a run starts or resumes (a run may span machines: which CPU,
# whether it has native bf16, what precision=auto means there, and the checkpoint it went on from), committed with
# the next result or with benchmarks/inflight at the end of a session
segment() {
    python - "$1" "$2" "$segments" <<'PY' || log "could not record the segment of $1 (the run goes on)"
import json, os, platform, sys, time
from pathlib import Path
import torch
from lakd.engine import resolve_runtime
what, run_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
             platform.processor())
flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
resumed_from = None
if (run_dir / "last.pt").is_file():
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    resumed_from = {"epochs_done": int(ckpt["epoch"]), "step": int((ckpt.get("partial") or {}).get("step", 0))}
record = {"run": what, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed_from": resumed_from,
          "cpu": model, "cpus": os.cpu_count(), "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
          "precision_auto_here": resolve_runtime("auto", "auto", "auto").describe(), "torch": torch.__version__}
with out.open("a") as f:
    f.write(json.dumps(record) + "\n")
PY
}
again() { log "step done; re-reading $0"; exec bash "$main_repo/benchmarks/cifar100_strong_queue.sh"; }

# teacher MODEL EPOCHS: `lakd train` with configs/cifar100_strong_teacher.yaml; the best-on-validation checkpoint,
# optimizer state stripped, becomes src/lakd/teachers/cifar100_MODEL_eEPOCHS.pt (weights-only, committed)
teacher() {
    local model=$1 epochs=$2 name="cifar100_$1_e$2"
    local out="runs/cifar100-strong/teacher-$model-e$epochs"
    local final="$main_repo/src/lakd/teachers/$name.pt" json="$teachers_json/teacher_${model}_e$epochs.json"
    if [ -f "$final" ] && [ -f "$json" ]; then  # the protocol names it under the worktree's benchmarks/teachers
        cmp -s "$final" "src/lakd/teachers/$name.pt" || cp "$final" "src/lakd/teachers/$name.pt"
        return 0
    fi
    if [ ! -f "$out/summary.json" ]; then
        local how=()
        if [ -f "$out/last.pt" ]; then how=(--resume); elif [ -e "$out" ]; then how=(--force); fi  # no checkpoint yet
        log "teacher $model $epochs epochs ${how[*]}"
        segment "teacher-$model-e$epochs" "$out"
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
    commit_results "teacher $model, $epochs epochs (weights-only, best on validation) and its metrics"
    again
}

# the protocol's runs: `lakd bench` at the pin, results straight into main's benchmarks/results (the item-5 study's
# into main's benchmarks/studies/results); each result committed when it lands
# bench PAIR SEEDS METHODS...: one `lakd bench cifar100-strong` call per run
bench() { bench_in cifar100-strong cifar100-strong benchmarks/results "$@"; }
# study PAIR SEEDS VARIANTS...: the same for benchmarks/studies/lakd_parts_cifar100.yaml (main's file, the pin's code)
study() {
    bench_in "$main_repo/benchmarks/studies/lakd_parts_cifar100.yaml" lakd-parts-cifar100 benchmarks/studies/results "$@"
}
bench_in() {  # bench_in PROTOCOL ITS-NAME RESULTS-DIR PAIR SEEDS METHODS...
    local protocol=$1 label=$2 results=$3 pair=$4 seeds=$5 method seed
    shift 5
    for seed in $seeds; do
        for method in "$@"; do
            [ -f "$main_repo/$results/$label/$pair/$method-s$seed.json" ] && continue
            log "lakd bench $label --pairs $pair --methods $method --seeds $seed"
            segment "$label/$pair/$method-s$seed" "runs/bench/$label/$pair/$method-s$seed"
            python -m lakd bench "$protocol" --no-progress --results-dir "$main_repo/$results" \
                --pairs "$pair" --methods "$method" --seeds "$seed"
            commit_results "$label $pair $method seed $seed (pinned at $PIN)"
            again  # a newer version of this file takes over between any two runs, not only after a teacher
        done
    done
}
strongest() {  # the three strongest baselines of a pair by seed-0 validation top-1 (vanilla counts as one)
    python - "$main_repo/benchmarks/results/cifar100-strong/$1" <<'PY'
import json, sys
from pathlib import Path
vals = {p.name[:-len("-s0.json")]: json.loads(p.read_text())["best_val_top1"] for p in Path(sys.argv[1]).glob("*-s0.json")}
print(" ".join(sorted((m for m in vals if not m.startswith("lakd")), key=lambda m: -vals[m])[:3]))
PY
}
# item 5 (pre-registered in docs/benchmarks-cifar100.md before any student ran): if frozen `lakd` is not >= 0.5
# test points ahead of the best baseline on a pair (3 seeds), its parts are studied on the ResNet pair's validation
# split (seed 0 of four variants, seeds 1-2 of those >= 0.5 above frozen `lakd`'s seed-0 validation), and the
# variants whose 3-seed validation mean is >= 0.5 above frozen `lakd`'s run untouched, 3 seeds, on the VGG pair.
# The rules are applied by benchmarks/cifar100_strong_study.py from the committed JSONs, never by hand.
rules() { python "$main_repo/benchmarks/cifar100_strong_study.py" "$@"; }
study_if_behind() {  # study_if_behind PAIR: the study's ResNet-pair runs, only if LAKD is not ahead on PAIR
    local rc=0
    rules behind "$1" || rc=$?
    [ "$rc" -eq 0 ] || return 0  # ahead (1), or PAIR's seeds not all in (2: nothing to decide yet)
    study resnet56_resnet20 "0" lakd-no-ndam lakd-no-feat lakd-no-ramp lakd-logit-kd
    # the precision control (decides nothing): frozen `lakd` in fp32, since the study spans bf16 and fp32 machines
    study resnet56_resnet20 "0" lakd-fp32-control
    study resnet56_resnet20 "1 2" $(rules carried)
}
# The order puts first what decides the most: the resnet pair's seed 0 of every method (is LAKD ahead there, which
# three baselines get seeds), then its seeds, then the vgg13 teacher and the heterogeneous pair the same way.
teacher resnet56 80
bench resnet56_resnet20 "0" lakd lakd-local kd fitnet dkd dist kd-ls at nd crd reviewkd vanilla
bench resnet56_resnet20 "1 2" lakd lakd-local $(strongest resnet56_resnet20)
study_if_behind resnet56_resnet20
teacher vgg13 50
bench vgg13_mobilenetv2 "0" lakd lakd-local kd fitnet dkd dist kd-ls at nd crd vanilla reviewkd
bench vgg13_mobilenetv2 "1 2" lakd lakd-local $(strongest vgg13_mobilenetv2)
study_if_behind vgg13_mobilenetv2
study vgg13_mobilenetv2 "0 1 2" $(rules confirmed)
# before the final table: does main compute what the pin computed? Checked again whenever main's committed src/
# differs from the one last checked (a check with uncommitted changes in src/ would prove nothing: it waits)
same_code() {  # same_code PAIR TEACHER
    local pair=$1 teacher=$2 json="$main_repo/benchmarks/results/cifar100_strong_same_code_check.json" src
    src=$(git -C "$main_repo" rev-parse HEAD:src)
    if [ -n "$(git -C "$main_repo" status --porcelain -- src)" ]; then
        log "same-code check of $pair waits: main has uncommitted changes in src/"
        return 0
    fi
    python - "$json" "$pair" "$src" <<'PY' && return 0  # exit 0: this src/ is checked already
import json, sys
from pathlib import Path
path, pair, src = sys.argv[1:]
done = json.loads(Path(path).read_text()).get("pairs", {}).get(pair, {}) if Path(path).exists() else {}
ran = all(row["verdict"] != "failed" for row in done.get("rows", []))  # a run that failed to start proves nothing
sys.exit(0 if done.get("main_src") == src and done.get("main_src_uncommitted_files") == 0 and done.get("complete")
         and ran else 1)
PY
    log "same-code check, $pair: main's src/ $src against the pin"
    ENTRIES= bash "$main_repo/benchmarks/cifar100_strong_same_code_check.sh" "$teacher" "$pair" "$json"
    commit_results "same-code check of $pair: main $(git -C "$main_repo" rev-parse --short=7 HEAD) against $PIN"
    again
}
same_code resnet56_resnet20 "$main_repo/src/lakd/teachers/cifar100_resnet56_e80.pt"
same_code vgg13_mobilenetv2 "$main_repo/src/lakd/teachers/cifar100_vgg13_e50.pt"
log "done"
