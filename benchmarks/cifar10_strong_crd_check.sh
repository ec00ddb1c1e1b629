#!/usr/bin/env bash
# CRD's cifar10-strong run uses the pinned comparison code (67a8b2f) with one change cherry-picked: 4b241c3, CRD's
# scores against the whole memory bank by one matmul instead of from the gathered (B, K+1, D) rows (5.4x faster
# steps on a CPU; the pinned way would take ~11 hours on a machine without native bf16). Does it compute what the
# pinned code computes? Two checks, each from a git worktree:
#   1. with the change but its dense scoring turned off (DENSE_BANK_FACTOR = 0), the protocol's CRD command cut to
#      4 steps (512 images) gives bit-identical student weights to the pinned code: nothing else changed;
#   2. with the change, from the same state (student, teacher, banks, Z, optimizer), one step at the protocol's
#      sizes (resnet20 / resnet56_a, batch 128, a 45,000-row bank, 16,384 negatives) gives the same gradients
#      scored densely as gathered, to float rounding, for 3 consecutive steps.
# (Weights after several steps are no test of 2: CRD's exp(s / 0.07) makes training amplify a rounding difference
# of 1e-7 in the first step to ~1e-4 in four.)
#
#   LAKD_DATA=../shared/data bash benchmarks/cifar10_strong_crd_check.sh
source "$(dirname "$0")/scratch_worktrees.sh"
change=4b241c3
git -C "$repo" worktree add -q --detach "$scratch/wt-pinned" "$pinned"
git -C "$repo" worktree add -q --detach "$scratch/wt-change" "$pinned"
git -C "$scratch/wt-change" cherry-pick -n "$change" > /dev/null
echo "pinned + $change differs from pinned in: $(git -C "$scratch/wt-change" diff --cached --name-only "$pinned" | tr '\n' ' ')"

# 1. the change with dense scoring off is the pinned code, bit for bit
cp -r "$scratch/wt-change" "$scratch/wt-change-gathered"
sed -i 's/^DENSE_BANK_FACTOR = 8$/DENSE_BANK_FACTOR = 0/' "$scratch/wt-change-gathered/src/lakd/distill/crd.py"
grep -q '^DENSE_BANK_FACTOR = 0$' "$scratch/wt-change-gathered/src/lakd/distill/crd.py"
for way in pinned change-gathered; do
    wt="$scratch/wt-$way"
    (cd "$wt" && PYTHONPATH="$wt/src" python -m lakd distill -c configs/cifar10_strong.yaml -c configs/methods/crd.yaml \
        --seed 0 --epochs 1 --out "$scratch/out-$way" --no-progress data.train_limit=512 data.test_limit=200 \
        train.eval_test=false > "$scratch/out-$way.log" 2>&1) || { cat "$scratch/out-$way.log"; exit 1; }
done
python - "$scratch/out-pinned/last.pt" "$scratch/out-change-gathered/last.pt" <<'EOF'
import sys

import torch

a, b = (torch.load(p, weights_only=True, map_location="cpu")["model"] for p in sys.argv[1:3])
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"1. change with dense scoring off vs pinned, student weights after 4 steps: "
      f"{'bit-identical' if same else 'DIFFER'}")
EOF

# 2. dense vs gathered scores from the same state, at the protocol's sizes
PYTHONPATH="$scratch/wt-change/src" python - <<'EOF'
import copy

import torch

from lakd.distill import build_distiller
from lakd.models import build_model

torch.manual_seed(0)
n, batch = 45000, 128
gathered = build_distiller("crd", build_model("resnet20", 10), build_model("resnet56_a", 10), {},
                           total_epochs=15, train_labels=torch.arange(n) % 10)
gathered.contrast.dense_bank_factor = 0
gathered.train()
opt = torch.optim.SGD(gathered.learnable_parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def step(model, optimizer, x, y, index, rng):
    torch.set_rng_state(rng)  # the same negatives drawn
    optimizer.zero_grad(set_to_none=True)
    model.train_step(x, y, 0.5, backward=lambda loss: loss.backward(), index=index)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads


worst = 0.0
for i in range(3):
    x, y, index = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)), torch.randperm(n)[:batch]
    dense = copy.deepcopy(gathered)
    dense.contrast.dense_bank_factor = 8
    assert dense.contrast.dense_scores(16385) and not gathered.contrast.dense_scores(16385)
    dense_opt = torch.optim.SGD(dense.learnable_parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dense_opt.load_state_dict(opt.state_dict())
    rng = torch.get_rng_state()
    g, d = step(gathered, opt, x, y, index, rng), step(dense, dense_opt, x, y, index, rng)
    rel = max(((g[k] - d[k]).norm() / g[k].norm().clamp_min(1e-30)).item() for k in g)
    worst = max(worst, rel)
    print(f"2. step {i + 1}, same state: dense vs gathered gradients, largest relative difference of a tensor {rel:.2e}")
print(f"2. {'same to float rounding' if worst < 1e-4 else 'DIFFER'} (largest {worst:.2e})")
EOF
