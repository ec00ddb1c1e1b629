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
