#!/usr/bin/env bash
# Do the cifar10-strong runs made before the comparison was pinned compute what the pinned commit computes?
# For each such run (method : the commit its result JSON records), the protocol's own command cut to 4 steps
# (512 images) runs at that commit and at the pinned 67a8b2f, each from a git worktree, and the student weights
# are compared bit for bit. Prints one line per method; the worktrees and runs go to a scratch folder.
#
#   LAKD_DATA=../shared/data bash benchmarks/cifar10_strong_same_code_check.sh
source "$(dirname "$0")/scratch_worktrees.sh"
for pair in kd:6772e03 lakd:42c4dc6 lakd_local:dcfbba6 fitnet:5b900c2 reviewkd:55bd923 dkd:e5e2fb5; do
  method=${pair%%:*}; commit=${pair##*:}
  for c in "$commit" "$pinned"; do
    wt="$scratch/wt-$c"
    [ -d "$wt" ] || git -C "$repo" worktree add -q --detach "$wt" "$c"
    (cd "$wt" && PYTHONPATH="$wt/src" python -m lakd distill -c configs/cifar10_strong.yaml \
        -c "configs/methods/$method.yaml" --seed 0 --epochs 1 --out "$scratch/out-$method-$c" --no-progress \
        data.train_limit=512 data.test_limit=200 train.eval_test=false > "$scratch/out-$method-$c.log" 2>&1)
  done
  python - "$scratch/out-$method-$commit/last.pt" "$scratch/out-$method-$pinned/last.pt" "$method" "$commit" \
      "$pinned" <<'EOF'
import sys

import torch

a, b = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in sys.argv[1:3])
method, commit, pinned = sys.argv[3:]
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b)
verdict = "bit-identical" if same else "DIFFER"
print(f"{method}: {commit} vs {pinned}: student weights after 4 steps {verdict} (max abs diff {diff})")
EOF
done
