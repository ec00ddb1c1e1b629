# Sourced by the cifar10-strong code checks: strict mode, the repository root ($repo), an absolute $LAKD_DATA, a
# scratch folder ($scratch) whose git worktrees (wt-*) and files are removed on exit, and the pinned commit.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)"
: "${LAKD_DATA:?set LAKD_DATA to the folder holding cifar-10-batches-py (e.g. ../shared/data)}"
export LAKD_DATA="$(cd "$LAKD_DATA" && pwd)"
scratch="$(mktemp -d)"
trap 'for w in "$scratch"/wt-*; do git -C "$repo" worktree remove --force "$w" 2>/dev/null || true; done; rm -rf "$scratch"' EXIT
pinned=67a8b2f  # the commit every run of the cifar10-strong comparison computes with
