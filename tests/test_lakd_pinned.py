"""LAKD's numbers pinned: `lakd` and `lakd-local` losses and gradients on a fixed batch, for a zoo and a hooked
student, against values recorded from main before LAKD's two forward paths became one (issue 32). A refactor of
LAKD must leave every value here unchanged (to float rounding).

Regenerate only on purpose (a change of the method itself, stated in its commit):
    python tests/test_lakd_pinned.py --write
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lakd.distill import build_distiller
from lakd.models import HookedModel, build_model
from tests.test_any_model import ZooAsPlain  # a zoo model seen as a foreign module

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("data") / "lakd_pinned.json"
SHAPE = (3, 16, 16)
# configs/methods/lakd_local.yaml's parameters (the test checks the preset still says so)
LOCAL = {"detach": True, "detach_until": 1.0, "backward": "local", "teacher_inputs_until": 0.3}
# (case, student kind, method parameters, training progress of the step)
CASES: list[tuple[str, str, dict[str, Any], float]] = [
    ("lakd-zoo-p0.05", "zoo", {}, 0.05),  # the ramp's start: module 0 only
    ("lakd-zoo-p0.5", "zoo", {}, 0.5),
    ("lakd-local-zoo-p0.25", "zoo", LOCAL, 0.25),  # teacher-fed modules, every ramp started
    ("lakd-local-zoo-p0.5", "zoo", LOCAL, 0.5),  # own inputs, local backward
    ("lakd-hooked-p0.5", "hooked", {}, 0.5),
    ("lakd-local-hooked-p0.25", "hooked", LOCAL, 0.25),
    ("lakd-local-hooked-p0.5", "hooked", LOCAL, 0.5),
    ("lakd-local-kd-zoo-p0.5", "zoo", {**LOCAL, "kd_weight": 0.5}, 0.5),  # the last module's logit term too
]


def compute(kind: str, params: dict[str, Any], progress: float) -> dict[str, Any]:
    """One training step's loss terms and, per parameter, its gradient's sum, norm and a fixed projection."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    if kind == "hooked":
        stages = ["zoo.stages.0", "zoo.stages.1", "zoo.stages.2"]
        student, teacher = HookedModel(ZooAsPlain(student), stages), HookedModel(ZooAsPlain(teacher), stages)
    torch.manual_seed(1)
    d = build_distiller("lakd", student, teacher, params, input_shape=SHAPE, total_epochs=2)
    d.train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, *SHAPE, generator=g), torch.randint(0, 10, (6,), generator=g)
    _, losses = d.train_step(x, y, progress, backward=lambda loss: loss.backward())
    grads = {}
    for name, p in d.named_parameters():
        if p.grad is None:
            continue
        name = name.replace("student_model.model.zoo.", "student_model.")
        direction = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(grads)))
        grads[name] = [p.grad.sum().item(), p.grad.norm().item(), (p.grad * direction).sum().item()]
    return {"losses": {k: v.item() for k, v in losses.items()}, "grads": grads}


def test_the_local_preset_is_the_one_pinned() -> None:
    preset = yaml.safe_load((ROOT / "configs/methods/lakd_local.yaml").read_text())["distill"]["params"]
    assert preset == LOCAL


@pytest.mark.parametrize(("case", "kind", "params", "progress"), CASES, ids=[c[0] for c in CASES])
def test_lakd_losses_and_gradients_are_pinned(case: str, kind: str, params: dict[str, Any], progress: float) -> None:
    pinned = json.loads(PINNED.read_text())["cases"][case]
    now = compute(kind, params, progress)
    assert list(now["losses"]) == list(pinned["losses"])  # the same terms in the same order
    for name, value in pinned["losses"].items():
        assert now["losses"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert set(now["grads"]) == set(pinned["grads"]) and len(pinned["grads"]) > 20
    for name, stats in pinned["grads"].items():
        scale = max(abs(stats[1]), 1e-6)  # the gradient's norm sets the scale of its rounding
        for got, want in zip(now["grads"][name], stats, strict=True):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5 * scale), name


def _write() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    cases = {case: compute(kind, params, progress) for case, kind, params, progress in CASES}
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps({"made_at": commit.stdout.strip(), "torch": torch.__version__, "cases": cases},
                                 indent=1) + "\n")
    print(f"wrote {PINNED}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        torch.set_num_threads(1)
        _write()
    else:
        raise SystemExit(__doc__)
