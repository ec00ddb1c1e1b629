"""Property tests that run what they build (issue 33, item 3): generated method parameters and run settings are
not only validated but executed — a distiller step on a tiny pair, a one-epoch run on synthetic images — and each
ends in success or one ``LakdError``: never another exception, never a large allocation, never a run folder
written for a refused input.

``LAKD_FUZZ_EXAMPLES`` raises the number of examples (the suite's default keeps it under a minute); the counts of
the last long run are in docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource

import pytest

hypothesis = pytest.importorskip("hypothesis")
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lakd.cli import main  # noqa: E402
from lakd.distill import build_distiller, list_methods, make_params, method_class  # noqa: E402
from lakd.errors import LakdError  # noqa: E402
from lakd.models import build_model  # noqa: E402

EXAMPLES = int(os.environ.get("LAKD_FUZZ_EXAMPLES", "0"))
MAX_GROWTH_MB = 1500  # what one tiny step may add to the process's peak memory, whatever the input


def budget(default: int) -> settings:
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _number(name: str) -> st.SearchStrategy:
    """Values a parameter of this name may be given: around its scale, at the edges, absurd, non-finite."""
    edges = st.sampled_from([0, 1, -1, 1e-12, 1e-6, 0.5, 2, 10, 1e3, 1e6, 1e12, 2**31, math.inf, -math.inf, math.nan])
    return st.one_of(edges, st.floats(-1e3, 1e3, allow_nan=False), st.integers(-10, 10**7), st.booleans(),
                     st.text(max_size=6), st.none())


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_model("resnet8", 10), build_model("resnet14", 10)


@budget(40)
@given(method=st.sampled_from(list_methods()), data=st.data())
def test_generated_method_parameters_train_a_step_or_are_one_clear_error(
        method: str, data: st.DataObject, pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    fields = {f.name: f for f in dataclasses.fields(method_class(method).Params)}
    names = data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True))
    params = {}
    for name in names:
        default = fields[name].default
        choices = st.sampled_from(["joint", "local", "none", "x"]) if isinstance(default, str) else _number(name)
        params[name] = data.draw(choices)
    student, teacher = (build_model(n, 10) for n in ("resnet8", "resnet14"))
    student.load_state_dict(pair[0].state_dict())
    teacher.load_state_dict(pair[1].state_dict())
    before = peak_mb()
    try:
        make_params(method, params)
        d = build_distiller(method, student, teacher, params, input_shape=(3, 32, 32), total_epochs=2,
                            train_labels=torch.arange(16) % 10)
        d.train()
        x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
        extra = {"index": torch.arange(8)} if d.needs_index else {}
        _, losses = d.train_step(x, y, 0.3, backward=lambda loss: loss.backward(), epoch=0.6, **extra)
    except LakdError:
        return
    finally:
        assert peak_mb() - before < MAX_GROWTH_MB, (method, params)
    # accepted: the step ran; its losses are numbers (a non-finite one the trainer refuses with a LakdError)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in losses.values()), (method, params)


RUN_KEYS = {
    "optim.lr": _number("lr"), "optim.momentum": _number("momentum"), "optim.weight_decay": _number("wd"),
    "train.label_smoothing": _number("ls"), "data.batch_size": _number("batch"), "data.crop_padding": _number("pad"),
    "schedule.warmup_epochs": _number("warmup"), "schedule.name": st.sampled_from(["cosine", "step", "x", ""]),
    "train.seed": _number("seed"), "data.val_size": _number("val"), "train.bn_recalibrate": _number("bn"),
    "data.augmentation": st.sampled_from(["auto", "pad_crop", "resized_crop", "none"]),
    "model.kwargs": st.sampled_from(["{}", "{x: 1}", "{num_classes: 3}", "[1]", "7"]),
}


@budget(12)
@given(data=st.data())
def test_generated_run_settings_train_one_epoch_or_are_one_clear_error(data: st.DataObject, tmp_path_factory:
                                                                       pytest.TempPathFactory,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    keys = data.draw(st.lists(st.sampled_from(sorted(RUN_KEYS)), min_size=1, max_size=3, unique=True))
    overrides = []
    for key in keys:
        value = data.draw(RUN_KEYS[key])
        text = value if isinstance(value, str) and key in ("model.kwargs",) else \
            yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        overrides.append(f"{key}={text}")
    out = tmp_path_factory.mktemp("run") / "r"
    before = peak_mb()
    code = main(["train", "--model", "resnet8", "--dataset", "synthetic", "data.synthetic_size=48",
                 "data.val_size=8", "--epochs", "1", "--batch-size", "8", "--no-progress", "train.precision=fp32",
                 "--out", str(out), *overrides])
    err = capsys.readouterr().err
    assert peak_mb() - before < MAX_GROWTH_MB, overrides
    assert code in (0, 2), (overrides, code, err[-500:])
    if code == 2:
        assert err.startswith("lakd: error: ") and "Traceback" not in err, (overrides, err[-500:])
        lines = [line for line in err.splitlines() if line.startswith("lakd: error:")]
        assert len(lines) == 1, err
        # refused before any work (no folder), or a run that failed on the data it met (a NaN loss, stopped
        # before any checkpoint was written): never a half-written checkpoint
        assert not out.exists() or not (out / "last.pt").exists() or "non-finite" in err or "became" in err, err
