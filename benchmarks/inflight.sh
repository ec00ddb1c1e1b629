#!/usr/bin/env bash
# Carry an unfinished `lakd bench` run across machines: runs/ is not committed, so a run stopped at the end of a
# session would restart from epoch 0 on the next machine. `save` copies every started-but-unfinished run folder
# (it has last.pt, no summary.json) under runs/ into benchmarks/inflight/ (commit that folder); `restore` copies
# them back into runs/ where runs/ lacks them, so `lakd bench` resumes them from their last checkpoint.
#
#   bash benchmarks/inflight.sh save      # after stopping the queue with SIGTERM (it checkpoints first)
#   bash benchmarks/inflight.sh restore   # on a new machine, before starting the queue
#
# A run folder is small for these protocols (resnet20: ~3.5 MB with best.pt and last.pt); a teacher's is not (VGG-13:
# ~114 MB), so carry one only when it has made real progress. Finished runs are not carried: their result JSON is
# committed and `lakd bench` skips them. Needs a python with torch on PATH (to slim best.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
store=benchmarks/inflight/runs

case "${1:-}" in
save)
    rm -rf benchmarks/inflight
    find -L runs -name last.pt -type f | while read -r ckpt; do
        dir=$(dirname "$ckpt")
        [ -f "$dir/summary.json" ] && continue
        rel=${dir#runs/}
        mkdir -p "$store/$rel"
        # plain files only (never a link, so a restore writes nothing outside runs/), not the run's .lock, and not
        # last.prev.pt: it is the fallback for a torn last.pt, and the saved last.pt was written whole (SIGTERM
        # checkpoints before the run exits); a ResNet-56 one would be 7 MB more in git for nothing
        find "$dir" -maxdepth 1 -type f ! -name '.*' ! -name 'last.prev.pt' ! -name 'best.pt' -exec cp {} "$store/$rel/" \;
        # best.pt is never resumed from (last.pt is): it travels as weights and metadata only, without the optimizer
        # state and the training extras, which halves it (a VGG-13 teacher's best.pt: ~76 MB -> ~38 MB in git)
        [ -f "$dir/best.pt" ] && python - "$dir/best.pt" "$store/$rel/best.pt" <<'PY'
import sys
import torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save({k: v for k, v in ckpt.items() if k in ("format", "model", "meta", "epoch", "best", "config")}, sys.argv[2])
PY
        echo "saved runs/$rel"
    done
    ;;
restore)
    [ -d "$store" ] || { echo "nothing to restore (no $store)"; exit 0; }
    find "$store" -name last.pt -type f | while read -r ckpt; do
        rel=$(dirname "${ckpt#"$store"/}")
        if [ -e "runs/$rel" ]; then
            echo "kept runs/$rel (already here)"
            continue
        fi
        mkdir -p "runs/$rel"
        find "$store/$rel" -maxdepth 1 -type f -exec cp {} "runs/$rel/" \;
        echo "restored runs/$rel"
    done
    ;;
*)
    echo "usage: bash benchmarks/inflight.sh save|restore" >&2
    exit 2
    ;;
esac
