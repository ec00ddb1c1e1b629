#!/usr/bin/env bash
# Make benchmarks/.venv-torchdistill: the peer venv in which benchmarks/peer_comparison.py runs torchdistill.
#
# torchdistill 1.1.5 needs torch>=2.12 and torchvision>=0.27, and PyPI's torchvision wheels are CUDA builds whose
# _C.so links libtorch_cuda.so, so they cannot load on the +cpu torch of lakd's own venv. This venv therefore has
# its own torch (2.14.1, PyPI's CUDA build, which also runs on the CPU) and torchvision 0.29.1; it is never part
# of lakd's install. Pins: benchmarks/torchdistill/constraints.txt (used by every pip call below, so no later
# install swaps torch). lakd itself goes in --no-deps (its data loader is reused for the identical 45,000-image
# split), with the light deps it imports.
#
# Usage: bash benchmarks/make_torchdistill_venv.sh [PYTHON]     (idempotent: re-running only checks / completes)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="$HERE/.venv-torchdistill"
PY="${1:-python3}"
CONSTRAINTS="$HERE/torchdistill/constraints.txt"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1

have() {  # have DIST VERSION: is exactly that version installed in the venv?
    "$VENV/bin/python" - "$1" "$2" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).split("+")[0] == sys.argv[2] else 1)
PYEOF
}

have torch 2.14.1 && have torchvision 0.29.1 \
    || "${PIP[@]}" install -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1
have torchdistill 1.1.5 && have timm 1.0.31 \
    || "${PIP[@]}" install -c "$CONSTRAINTS" torchdistill==1.1.5 timm==1.0.31
"${PIP[@]}" install -q -c "$CONSTRAINTS" pyyaml tqdm Pillow safetensors numpy
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-deps -e "$REPO"

"$VENV/bin/python" - <<'PYEOF'
import sys
import torch, torchvision, torchdistill, timm, lakd
from importlib.metadata import version
import torchdistill.core.distillation  # noqa: F401  (fails if torchvision's ops cannot load)
print(f"python {sys.version.split()[0]}  torch {torch.__version__} (cuda build {torch.version.cuda})  "
      f"torchvision {torchvision.__version__}  torchdistill {version('torchdistill')}  timm {timm.__version__}  "
      f"lakd {version('lakd')}")
print(f"peer venv ready: {sys.prefix}")
PYEOF
