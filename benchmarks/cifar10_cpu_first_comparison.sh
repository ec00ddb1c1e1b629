#!/usr/bin/env bash
# First comparison on the cifar10-cpu protocol: vanilla, KD, AT, LAKD distil resnet20 from the resnet56 teacher
# (runs/teacher-resnet56/best.pt), same budget, same seed. Usage:
#   LAKD_DATA=../shared/data bash benchmarks/cifar10_cpu_first_comparison.sh EPOCHS
set -euo pipefail
epochs=${1:-2}
for method in vanilla kd at lakd; do
  out=runs/c10cpu-e${epochs}-${method}
  if [ -f "$out/summary.json" ]; then continue; fi
  resume=""; [ -f "$out/last.pt" ] && resume="--resume"
  lakd distill -c configs/cifar10_cpu.yaml -c configs/methods/${method}.yaml --epochs "$epochs" --out "$out" \
    --no-progress $resume
done
python benchmarks/collect_runs.py benchmarks/results/cifar10_cpu_first_comparison_e${epochs}.json \
  runs/c10cpu-e${epochs}-{vanilla,kd,at,lakd}
