"""benchmarks/bench_memory.py: every configuration it measures is a valid method + parameters (a typo or a study
parameter under the core method would only fail minutes into a measurement)."""

from __future__ import annotations

import pytest

from lakd.distill import make_params
from tests.scripts import load_script

CONFIGS = load_script("bench_memory.py").CONFIGS


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_configuration_resolves(name: str) -> None:
    method, params = CONFIGS[name]
    resolved = make_params(method, dict(params))
    for key, value in params.items():
        assert getattr(resolved, key) == value


def test_protocol_configurations_are_what_the_protocol_commands_resolve_to() -> None:
    configs, student, batch = load_script("bench_memory.py").protocol_configs("cifar10-strong", None)
    assert (student, batch) == ("resnet20", 128)
    assert {"kd", "lakd", "lakd-local", "crd", "dkd"} <= set(configs)
    assert configs["dkd"] == ("dkd", {"beta": 2.0, "warmup_epochs": 1.25})  # the pair's per-method settings
    assert configs["lakd-local"][0] == "lakd" and configs["lakd-local"][1]["backward"] == "local"


def test_a_method_that_needs_sample_indices_is_measured() -> None:
    row = load_script("bench_memory.py").run_one("crd", {"nce_k": 16}, "resnet8", "resnet8", 4, 1, 0.5)
    assert row["saved_peak_mb"] > 0
