"""Property tests: whatever a config, an override, a protocol or a method parameter holds, lakd either accepts
it or raises one ``LakdError`` (what the CLI prints as one line) — never another exception, never a hang."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lakd.bench import load_protocol  # noqa: E402
from lakd.config import DistillRunConfig, build_config  # noqa: E402
from lakd.distill import list_methods, make_params, method_class  # noqa: E402
from lakd.errors import LakdError  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config_keys(obj: object, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


KEYS = config_keys(DistillRunConfig())
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


@FAST
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=30)), value=values)
def test_any_override_is_accepted_or_one_clear_error(key: str, value: object) -> None:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        build_config(DistillRunConfig, [], [f"{key}={text}"], {})
    except LakdError:
        pass


@FAST
@given(data=st.binary(max_size=300))
def test_any_config_file_is_read_or_one_clear_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    try:
        build_config(DistillRunConfig, [str(path)], [], {})
    except LakdError:
        pass


@FAST
@given(doc=st.dictionaries(st.sampled_from(["name", "configs", "methods", "default_methods", "seeds", "pairs",
                                            "other"]), values, max_size=5))
def test_any_protocol_is_loaded_or_one_clear_error(doc: dict, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_protocol(str(path))
    except LakdError:
        pass


@FAST
@given(method=st.sampled_from(list_methods()), data=st.data())
def test_any_method_parameter_is_accepted_or_one_clear_error(method: str, data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(method_class(method).Params)]
    params = data.draw(st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=10)), values, max_size=3))
    try:
        make_params(method, params)
    except LakdError:
        pass
