#!/usr/bin/env bash
# lakd's CUDA path end to end, in one script (< 8 min on one GPU), with one JSON of what ran, img/s and memory.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--steps N] [--out FILE] [--data-root DIR] [--work DIR] ...
#
# Steps, each as its own process and run folder under --work (default: a fresh temp dir):
#   teacher      lakd train of --teacher-arch (resnet56; resnet20 with --device cpu) for --steps steps
#   kd           lakd distill --method kd
#   lakd         lakd distill --method lakd                   (default: end to end)
#   lakd_local   lakd distill --method lakd distill.params.detach_until=1.0 distill.params.backward=local
#   torchrun_kd  torchrun --standalone --nproc_per_node=1 -m lakd distill --method kd
#   resume_kd    a 2-epoch KD run stopped after epoch 1 and continued with --resume (see --resume-mode)
#   export_onnx  lakd export --format onnx of the kd student ("skipped" when onnx / onnxruntime are missing)
#   eval         lakd eval --ckpt <kd>/best.pt --json
# Training runs use --precision bf16 and train.channels_last=true on cuda (--precision auto on cpu), one epoch of
# exactly --steps batches (data.train_limit = steps * batch, drop_last), validation on --eval-size images.
# Data: CIFAR-10 when DATA_ROOT/cifar10/train.npz exists (DATA_ROOT = --data-root, else $LAKD_DATA), else lakd's
# synthetic 32x32 set; the JSON says which. Every step is recorded (ok / failed / skipped / not_run, exit code,
# wall seconds; img/s, peak memory, epochs for training runs) with the device name and torch version, written to
# --out atomically, and a table is printed. Exit code: 0 all steps ok (or skipped), 1 a step failed, 2 bad usage,
# 130 interrupted (the JSON is written in the last two cases too).
# Writes go only to --work and --out: decoded-image caches, TMPDIR and other caches are pointed into --work.
set -euo pipefail
export LC_ALL=C  # EPOCHREALTIME with a '.' and plain sorting, whatever the caller's locale

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROG=benchmarks/gpu_check.sh

usage() {
  cat <<EOF
usage: bash $PROG [--device cuda|cpu] [--steps N] [--out FILE] [--data-root DIR] [--work DIR]
                  [--teacher-arch ARCH] [--student-arch ARCH] [--batch N] [--eval-size N]
                  [--resume-steps N] [--resume-mode epochs|signal] [--step-timeout SEC] [--budget SEC]
                  [--keep-work]

  --device D         cuda (default) or cpu
  --steps N          training steps per run (default 300; one epoch, so on CIFAR-10 at most 45,000 images:
                     351 steps at batch 128 — the JSON's train_steps says how many ran)
  --out FILE         result JSON (default benchmarks/results/gpu_check.json), written atomically
  --data-root DIR    datasets folder (default \$LAKD_DATA); CIFAR-10 if DIR/cifar10/train.npz exists, else synthetic
  --work DIR         run folders and logs go here (must be empty or absent; default: a new temp dir, removed
                     afterwards when every step passed, unless --keep-work)
  --teacher-arch A   teacher model (default resnet56; resnet20 with --device cpu)
  --student-arch A   student model (default resnet20)
  --batch N          global batch size (default 128)
  --eval-size N      validation images evaluated after each epoch (default 1000)
  --resume-steps N   steps per epoch of the 2-epoch resume run (default: min(steps, 20))
  --resume-mode M    epochs (default): run --epochs 1, then the same command with --epochs 2 --resume;
                     signal: run --epochs 2, SIGTERM it once epoch 1 is logged, then --resume
  --step-timeout S   a process still running after S seconds is stopped (SIGTERM, then SIGKILL) (default 300)
  --budget S         the whole check's time limit: each process gets at most what is left of it, and steps
                     that would start after it are not run (default 480 with cuda, 3600 with cpu)
  --keep-work        keep the temp work dir even when every step passed
  -h, --help         this help
EOF
}

die_usage() {  # bad usage: one line saying what, the usage, exit code 2, nothing written
  printf '%s: error: %s\n' "$PROG" "$1" >&2
  usage >&2
  exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]] && (( 10#$1 > 0 )); }

DEVICE=cuda
STEPS=300
OUT="$REPO/benchmarks/results/gpu_check.json"
DATA_ROOT="${LAKD_DATA:-}"
# shellcheck disable=SC2016 # the variable's name, not its value
DATA_ROOT_FROM='$LAKD_DATA'
[[ -n $DATA_ROOT ]] || DATA_ROOT_FROM=none
WORK=
TEACHER_ARCH=
STUDENT_ARCH=resnet20
BATCH=128
EVAL_SIZE=1000
RESUME_STEPS=
RESUME_MODE=epochs
STEP_TIMEOUT=300
BUDGET=
KEEP_WORK=0

need_value() { (( $2 >= 2 )) || die_usage "$1 needs a value"; [[ -n $3 ]] || die_usage "$1 needs a non-empty value"; }
while (( $# > 0 )); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --keep-work) KEEP_WORK=1; shift; continue ;;
    --device|--steps|--out|--data-root|--work|--teacher-arch|--student-arch|--batch|--eval-size|--resume-steps|\
    --resume-mode|--step-timeout|--budget)
      need_value "$1" $# "${2-}" ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --steps=3 -> --steps 3
    *) die_usage "unknown argument '$1'" ;;
  esac
  case $1 in
    --device) DEVICE=$2 ;;
    --steps) STEPS=$2 ;;
    --out) OUT=$2 ;;
    --data-root) DATA_ROOT=$2; DATA_ROOT_FROM=--data-root ;;
    --work) WORK=$2 ;;
    --teacher-arch) TEACHER_ARCH=$2 ;;
    --student-arch) STUDENT_ARCH=$2 ;;
    --batch) BATCH=$2 ;;
    --eval-size) EVAL_SIZE=$2 ;;
    --resume-steps) RESUME_STEPS=$2 ;;
    --resume-mode) RESUME_MODE=$2 ;;
    --step-timeout) STEP_TIMEOUT=$2 ;;
    --budget) BUDGET=$2 ;;
  esac
  shift 2
done

[[ $DEVICE == cuda || $DEVICE == cpu ]] || die_usage "--device must be cuda or cpu, got '$DEVICE'"
[[ $RESUME_MODE == epochs || $RESUME_MODE == signal ]] || die_usage "--resume-mode must be epochs or signal"
for pair in "--steps:$STEPS" "--batch:$BATCH" "--eval-size:$EVAL_SIZE" "--step-timeout:$STEP_TIMEOUT" \
            "--resume-steps:${RESUME_STEPS:-1}" "--budget:${BUDGET:-1}"; do
  is_uint "${pair#*:}" || die_usage "${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
STEPS=$((10#$STEPS)); BATCH=$((10#$BATCH)); EVAL_SIZE=$((10#$EVAL_SIZE)); STEP_TIMEOUT=$((10#$STEP_TIMEOUT))
if [[ -z $TEACHER_ARCH ]]; then if [[ $DEVICE == cpu ]]; then TEACHER_ARCH=resnet20; else TEACHER_ARCH=resnet56; fi; fi
if [[ -z $BUDGET ]]; then if [[ $DEVICE == cpu ]]; then BUDGET=3600; else BUDGET=480; fi; else BUDGET=$((10#$BUDGET)); fi
if [[ -z $RESUME_STEPS ]]; then RESUME_STEPS=$(( STEPS < 20 ? STEPS : 20 )); else RESUME_STEPS=$((10#$RESUME_STEPS)); fi
(( RESUME_STEPS <= STEPS )) || die_usage "--resume-steps ($RESUME_STEPS) must not exceed --steps ($STEPS)"
[[ $OUT != */ ]] || die_usage "--out must be a file, got '$OUT'"
[[ ! -d $OUT ]] || die_usage "--out '$OUT' is a folder; give a file name"
if [[ -n $WORK && -e $WORK ]]; then
  [[ -d $WORK ]] || die_usage "--work '$WORK' exists and is not a folder"
  [[ -z $(ls -A -- "$WORK") ]] || die_usage "--work '$WORK' is not empty (lakd never overwrites run folders)"
fi

PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
[[ -n $PYTHON ]] || { echo "$PROG: error: no python on PATH (activate lakd's venv)" >&2; exit 1; }
"$PYTHON" -c 'import lakd' 2>/dev/null || {
  echo "$PROG: error: '$PYTHON' cannot import lakd (activate the venv: . .venv/bin/activate)" >&2; exit 1; }
command -v timeout >/dev/null || { echo "$PROG: error: needs coreutils 'timeout'" >&2; exit 1; }

# -- folders: everything goes under WORK (and OUT) ----------------------------------------------------------
OUT_DIR=$(dirname -- "$OUT")
mkdir -p -- "$OUT_DIR"
OUT="$(cd -- "$OUT_DIR" && pwd)/$(basename -- "$OUT")"
AUTO_WORK=0
if [[ -z $WORK ]]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/lakd-gpu-check.XXXXXX")
  AUTO_WORK=1
fi
mkdir -p -- "$WORK"
WORK=$(cd "$WORK" && pwd)
RUNS="$WORK/runs"; RECORDS="$WORK/records"
mkdir -p "$RUNS" "$RECORDS" "$WORK/tmp" "$WORK/cache"
export TMPDIR="$WORK/tmp"                    # torchrun's / torch's temp files
export LAKD_CACHE="$WORK/cache/lakd-decoded"  # decoded CIFAR arrays (once per check, a few seconds)
export XDG_CACHE_HOME="$WORK/cache/xdg"       # lakd's default data root and user cache, other tools' caches
export CUDA_CACHE_PATH="$WORK/cache/cuda"      # the driver's JIT cache
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
unset WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT  # steps choose their own process layout

# -- data -----------------------------------------------------------------------------------------------------
TRAIN_LIMIT=$((STEPS * BATCH))
DATA_ARGS=()
if [[ -n $DATA_ROOT && -f $DATA_ROOT/cifar10/train.npz ]]; then
  DATASET=cifar10
  DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
  DATA_WHY="found $DATA_ROOT/cifar10/train.npz"
  DATA_ARGS=(--dataset cifar10 --data-root "$DATA_ROOT")
else
  DATASET=synthetic
  if [[ -z $DATA_ROOT ]]; then DATA_WHY="no --data-root and no \$LAKD_DATA"
  else DATA_WHY="no cifar10/train.npz under $DATA_ROOT"; fi
  SYNTHETIC_SIZE=$((TRAIN_LIMIT + EVAL_SIZE))
  DATA_ARGS=(--dataset synthetic "data.synthetic_size=$SYNTHETIC_SIZE" "data.val_size=$EVAL_SIZE")
fi
if [[ $DEVICE == cuda ]]; then
  PRECISION=bf16; RUNTIME_ARGS=(--device cuda --precision bf16 train.channels_last=true)
else
  PRECISION=auto; RUNTIME_ARGS=(--device cpu --precision auto)
fi
# One epoch (--epochs is given per run) of exactly N batches via data.train_limit (drop_last); only validation
# is evaluated, on EVAL_SIZE images.
COMMON=("${DATA_ARGS[@]}" "${RUNTIME_ARGS[@]}" --batch-size "$BATCH" --seed 0 --no-progress
        "data.test_limit=$EVAL_SIZE" train.eval_test=false)
LAKD=("$PYTHON" -m lakd)
PYBIN=$(dirname -- "$PYTHON")
if [[ -x $PYBIN/torchrun ]]; then TORCHRUN=("$PYBIN/torchrun")  # torchrun of this python (venv)
else TORCHRUN=("$PYTHON" -m torch.distributed.run); fi        # the same entry point

# -- step records: one folder per step, one sub-folder per process it ran -----------------------------------
STEP_NO=0
REC=
CHILD=
INTERRUPTED=0
# shellcheck disable=SC2317 # called by the trap
on_signal() {  # Ctrl-C / SIGTERM: stop the running step (lakd saves and exits 130/143), run nothing more
  INTERRUPTED=1
  if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
}
trap on_signal INT TERM

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
stop_requested() { (( INTERRUPTED != 0 )); }

begin_step() {  # NAME KIND RUN_DIR -> REC, the step's record folder
  STEP_NO=$((STEP_NO + 1))
  REC="$RECORDS/$(printf '%02d' "$STEP_NO")-$1"
  mkdir -p "$REC"
  printf '%s' "$1" >"$REC/name"
  printf '%s' "$2" >"$REC/kind"
  printf '%s' "$3" >"$REC/run_dir"
  printf '[%d] %-12s ' "$STEP_NO" "$1" >&2
}

set_status() { printf '%s' "$1" >"$REC/status"; printf '%s' "${2-}" >"$REC/note"; }  # STATUS NOTE

end_step() {  # one line on stderr: the first non-zero exit code (or 0) and the wall time of the step
  local total=0 rc=0 f
  for f in "$REC"/p*/wall_us; do
    if [[ -f $f ]]; then total=$((total + $(<"$f"))); fi
  done
  for f in "$REC"/p*/rc; do
    if [[ -f $f ]]; then rc=$(<"$f"); if (( rc != 0 )); then break; fi; fi
  done
  if [[ -f $REC/status ]]; then
    printf '%s: %s\n' "$(<"$REC/status")" "$(<"$REC/note")" >&2
  else
    printf 'exit %s  %d.%01d s\n' "$rc" $((total / 1000000)) $(( (total % 1000000) / 100000 )) >&2
  fi
}

# run_proc PHASE CMD...: run CMD under `timeout` (cwd WORK) with its stdout/stderr in $REC/pPHASE/; record exit
# code and wall time; return the exit code. Runs in the background + `wait`, so that a Ctrl-C / SIGTERM to this
# script reaches the step at once (on_signal). With RUN_PROC_WATCH set, the step gets SIGTERM as soon as that
# file is non-empty (the resume step's "signal" mode: metrics.jsonl holds epoch 1).
run_proc() {
  local phase="$REC/p$1"; shift
  mkdir -p "$phase"
  printf '%s\0' "$@" >"$phase/argv"
  local start end rc=0 sent=0 limit
  start=$(now_us)
  limit=$(( (DEADLINE_US - start) / 1000000 ))
  if (( limit > STEP_TIMEOUT )); then limit=$STEP_TIMEOUT; fi
  if (( limit < 1 )); then limit=1; fi
  printf '%s' "$limit" >"$phase/timeout_s"
  (cd "$WORK" && exec timeout -k 20 "$limit" "$@") >"$phase/stdout" 2>"$phase/stderr" </dev/null &
  CHILD=$!
  if [[ -n ${RUN_PROC_WATCH-} ]]; then
    while kill -0 "$CHILD" 2>/dev/null; do
      if [[ -s $RUN_PROC_WATCH ]]; then kill -TERM "$CHILD" 2>/dev/null || true; sent=1; break; fi
      sleep 0.05 || true
    done
    printf '%s' "$sent" >"$phase/sigterm_sent"
  fi
  while :; do
    rc=0
    wait "$CHILD" || rc=$?
    if (( rc > 128 )) && kill -0 "$CHILD" 2>/dev/null; then continue; fi  # wait cut short by our trap
    break
  done
  CHILD=
  end=$(now_us)
  printf '%s' "$rc" >"$phase/rc"
  printf '%s' $((end - start)) >"$phase/wall_us"
  return "$rc"
}

out_of_time() { (( $(now_us) + 1000000 >= DEADLINE_US )); }

run_step() {  # NAME KIND RUN_DIR CMD...: a step of one process; leaves REC set to its record
  if out_of_time; then not_run "$1" "$2" "time budget spent (--budget $BUDGET s)"; return 0; fi
  begin_step "$1" "$2" "$3"; shift 3
  run_proc 1 "$@" || true
  end_step
}

not_run() {  # NAME KIND REASON
  begin_step "$1" "$2" ""
  set_status not_run "$3"
  end_step
}

ran_ok() { [[ -f $1/p1/rc && $(<"$1/p1/rc") == 0 ]]; }  # RECORD: its (first) process exited 0

# -- the steps ------------------------------------------------------------------------------------------------
STARTED=$(date '+%Y-%m-%dT%H:%M:%S%z')
START_US=$(now_us)
DEADLINE_US=$((START_US + BUDGET * 1000000))
{
  echo "lakd GPU check: device $DEVICE, $STEPS steps x batch $BATCH, $DATASET data ($DATA_WHY)"
  echo "  teacher $TEACHER_ARCH -> student $STUDENT_ARCH, precision $PRECISION; work: $WORK"
} >&2

STEP_LIMIT=("data.train_limit=$TRAIN_LIMIT" --epochs 1)
TEACHER_DIR="$RUNS/teacher"
KD_DIR="$RUNS/kd"
R="$RUNS/resume_kd"
run_step teacher train "$TEACHER_DIR" \
  "${LAKD[@]}" train --model "$TEACHER_ARCH" "${COMMON[@]}" "${STEP_LIMIT[@]}" --out "$TEACHER_DIR"
TEACHER_REC=$REC
TEACHER_CKPT="$TEACHER_DIR/best.pt"
DISTILL=("${LAKD[@]}" distill --teacher "$TEACHER_CKPT" --student "$STUDENT_ARCH")
KD_REC=

if stop_requested || ! ran_ok "$TEACHER_REC" || [[ ! -f $TEACHER_CKPT ]]; then
  why="teacher step failed: no $TEACHER_CKPT"
  if stop_requested; then why=interrupted; fi
  for s in kd:distill lakd:distill lakd_local:distill torchrun_kd:distill resume_kd:resume export_onnx:export \
           eval:eval; do
    not_run "${s%%:*}" "${s#*:}" "$why"
  done
else
  run_step kd distill "$KD_DIR" "${DISTILL[@]}" --method kd "${COMMON[@]}" "${STEP_LIMIT[@]}" --out "$KD_DIR"
  KD_REC=$REC
  if stop_requested; then not_run lakd distill interrupted; else
    run_step lakd distill "$RUNS/lakd" \
      "${DISTILL[@]}" --method lakd "${COMMON[@]}" "${STEP_LIMIT[@]}" --out "$RUNS/lakd"
  fi
  if stop_requested; then not_run lakd_local distill interrupted; else
    run_step lakd_local distill "$RUNS/lakd_local" "${DISTILL[@]}" --method lakd "${COMMON[@]}" "${STEP_LIMIT[@]}" \
      distill.params.detach_until=1.0 distill.params.backward=local --out "$RUNS/lakd_local"
  fi
  if stop_requested; then not_run torchrun_kd distill interrupted; else
    run_step torchrun_kd distill "$RUNS/torchrun_kd" "${TORCHRUN[@]}" --standalone --nproc_per_node=1 \
      -m lakd "${DISTILL[@]:3}" --method kd "${COMMON[@]}" "${STEP_LIMIT[@]}" --out "$RUNS/torchrun_kd"
  fi

  # resume: a KD run of 2 epochs x RESUME_STEPS steps, stopped after epoch 1, continued with --resume
  if stop_requested; then not_run resume_kd resume interrupted
  elif out_of_time; then not_run resume_kd resume "time budget spent (--budget $BUDGET s)"
  else
    begin_step resume_kd resume "$R"
    printf '%s' "$RESUME_MODE" >"$REC/resume_mode"
    RCMD=("${DISTILL[@]}" --method kd "${COMMON[@]}" "data.train_limit=$((RESUME_STEPS * BATCH))" --out "$R")
    if [[ $RESUME_MODE == epochs ]]; then
      if run_proc 1 "${RCMD[@]}" --epochs 1 && ! stop_requested && ! out_of_time; then
        run_proc 2 "${RCMD[@]}" --epochs 2 --resume || true
      fi
    else
      rc1=0
      RUN_PROC_WATCH="$R/metrics.jsonl" run_proc 1 "${RCMD[@]}" --epochs 2 || rc1=$?
      if (( rc1 == 143 )) && ! stop_requested && ! out_of_time; then run_proc 2 "${RCMD[@]}" --epochs 2 --resume || true; fi
    fi
    end_step
  fi

  if stop_requested; then
    not_run export_onnx export interrupted
    not_run eval eval interrupted
  elif ! ran_ok "$KD_REC" || [[ ! -f $KD_DIR/best.pt ]]; then
    not_run export_onnx export "kd step failed: no $KD_DIR/best.pt"
    not_run eval eval "kd step failed: no $KD_DIR/best.pt"
  else
    if "$PYTHON" -c 'import onnx, onnxruntime' 2>/dev/null; then
      run_step export_onnx export "$RUNS/export" "${LAKD[@]}" export --ckpt "$KD_DIR/best.pt" --format onnx \
        --out "$RUNS/export/student.onnx"
    else
      begin_step export_onnx export "$RUNS/export"
      set_status skipped "skipped: onnx not installed"
      end_step
    fi
    EVAL_ARGS=(--device "$DEVICE" --precision "$PRECISION" --split test --json)
    if [[ $DATASET == cifar10 ]]; then EVAL_ARGS+=(--data-root "$DATA_ROOT"); fi
    if stop_requested; then not_run eval eval interrupted; else
      run_step eval eval "" "${LAKD[@]}" eval --ckpt "$KD_DIR/best.pt" "${EVAL_ARGS[@]}"
    fi
  fi
fi

# -- the JSON and the table -----------------------------------------------------------------------------------
trap - INT TERM
rc=0
"$PYTHON" "$HERE/gpu_check_summary.py" --records "$RECORDS" --out "$OUT" \
  "started=$STARTED" "wall_us=$(( $(now_us) - START_US ))" "device=$DEVICE" "steps=$STEPS" "batch=$BATCH" \
  "eval_size=$EVAL_SIZE" "teacher_arch=$TEACHER_ARCH" "student_arch=$STUDENT_ARCH" "precision=$PRECISION" \
  "channels_last=$([[ $DEVICE == cuda ]] && echo true || echo auto)" "dataset=$DATASET" "data_root=$DATA_ROOT" \
  "data_root_from=$DATA_ROOT_FROM" "data_why=$DATA_WHY" "train_limit=$TRAIN_LIMIT" "resume_steps=$RESUME_STEPS" \
  "resume_mode=$RESUME_MODE" "step_timeout_s=$STEP_TIMEOUT" "budget_s=$BUDGET" "work=$WORK" "interrupted=$INTERRUPTED" \
  "torchrun=${TORCHRUN[*]}" || rc=$?
if (( INTERRUPTED )); then rc=130; fi
if (( rc == 0 && AUTO_WORK && !KEEP_WORK )); then
  rm -rf -- "$WORK"
elif (( AUTO_WORK )); then
  echo "run folders and logs kept in $WORK" >&2
fi
exit "$rc"
