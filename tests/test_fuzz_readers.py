"""Fuzzing the file readers (hypothesis, a fixed budget per reader): a valid small file with random bytes
changed, cut or appended, and structurally valid files with random contents. Every input must give either a
result or one ``LakdError`` — never another exception, never a hang (each example has a deadline)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lakd.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint  # noqa: E402
from lakd.data.cifar import decode_jpeg_npz  # noqa: E402
from lakd.data.safe_pickle import read_cifar_python, write_cifar_python  # noqa: E402
from lakd.errors import LakdError  # noqa: E402
from lakd.models import build_model  # noqa: E402

BUDGET = settings(max_examples=60, deadline=timedelta(seconds=10),
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes replaced, then maybe cut short or extended."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    tail = draw(st.binary(max_size=16))
    return bytes(data[:cut] if cut is not None else data) + tail


def _valid_npz() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    out = io.BytesIO()
    np.savez(out, jpeg=np.concatenate(blobs), offsets=offsets, y=np.array([0, 1, 2], np.uint8),
             class_names=np.array(["a", "b", "c"]))
    return out.getvalue()


def _valid_checkpoint() -> bytes:
    out = io.BytesIO()
    torch.save({"model": build_model("resnet8", 3).state_dict(),
                "meta": {"arch": "resnet8", "num_classes": 3, "image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3,
                         "classes": ["a", "b", "c"]}}, out)
    return out.getvalue()


NPZ, CKPT = _valid_npz(), _valid_checkpoint()


def read_or_refuse(read: Callable[..., Any], *args: Any) -> Any:
    """What ``read`` returns, or None when it refuses the input with a ``LakdError`` (any other exception fails)."""
    try:
        return read(*args)
    except LakdError:
        return None


def _read_checkpoint(path: Path) -> None:
    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    model_from_checkpoint(ckpt, meta, f"checkpoint '{path}'")


@BUDGET
@given(data=mutated(NPZ))
def test_npz_reader_on_mutated_files(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    path.write_bytes(data)
    arrays = read_or_refuse(decode_jpeg_npz, path)
    if arrays is not None:
        assert arrays.x.dtype == np.uint8 and len(arrays.x) == len(arrays.y)


arrays_ = st.one_of(
    st.lists(st.integers(-2**40, 2**40), max_size=6).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.integers(0, 255), max_size=40).map(lambda v: np.array(v, dtype=np.uint8)),
    st.lists(st.floats(allow_nan=True), max_size=4).map(np.array),
    st.lists(st.text(max_size=4), max_size=3).map(np.array),
    st.just(np.zeros((2, 2), np.int64)),
)


@BUDGET
@given(fields=st.dictionaries(st.sampled_from(["jpeg", "offsets", "y", "class_names", "extra"]), arrays_))
def test_npz_reader_on_random_contents(fields: dict, tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, **fields)
    arrays = read_or_refuse(decode_jpeg_npz, path)
    if arrays is not None:
        assert len(arrays.x) == len(arrays.y)


@BUDGET
@given(data=st.data())
def test_cifar_pickle_reader_on_mutated_files(data: st.DataObject, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = write_cifar_python(tmp_path, "cifar10", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                                np.arange(10) % 10, [f"c{i}" for i in range(10)])
    victim = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
    (folder / victim).write_bytes(data.draw(mutated((folder / victim).read_bytes())))
    read = read_or_refuse(read_cifar_python, tmp_path, "cifar10", data.draw(st.sampled_from(["train", "test"])))
    if read is not None:
        x, y, _ = read
        assert x.dtype == np.uint8 and len(x) == len(y)


@BUDGET
@given(data=mutated(CKPT))
def test_checkpoint_reader_on_mutated_files(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(data)
    read_or_refuse(_read_checkpoint, path)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.floats(allow_nan=True), max_size=4))


@BUDGET
@given(meta=st.dictionaries(st.sampled_from(["arch", "num_classes", "image_size", "mean", "std", "classes",
                                             "stages", "dataset"]), scalars, max_size=8))
def test_checkpoint_reader_on_crafted_metadata(meta: dict, tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"model": build_model("resnet8", 3).state_dict(), "meta": {"arch": "resnet8", "num_classes": 3,
                                                                          **meta}}, path)
    read_or_refuse(_read_checkpoint, path)


def _valid_export(tmp_path: Path) -> Path:
    from lakd.export import export_checkpoint

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(CKPT)
    out = tmp_path / "best.safetensors"
    export_checkpoint(ckpt, out, "safetensors", force=True)
    return out


@BUDGET
@given(data=st.data())
def test_export_reader_on_mutated_files(data: st.DataObject, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from lakd.export import load_exported

    path = _valid_export(tmp_path)
    path.write_bytes(data.draw(mutated(path.read_bytes())))
    read_or_refuse(load_exported, path)


def test_found_by_fuzzing_npz_offsets_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    np.savez(path, jpeg=np.zeros((2, 2), np.int64), offsets=np.array(["", ""]), y=np.array([0]))
    with pytest.raises(LakdError, match="must be 1-d integer arrays"):
        decode_jpeg_npz(path)


def test_found_by_fuzzing_a_pickle_length_field_cannot_allocate_beyond_the_file(tmp_path: Path) -> None:
    from lakd.data.safe_pickle import safe_load_pickle

    path = tmp_path / "data_batch_1"
    for declared in (b"\x8e", b"\x95"):  # BINBYTES8 / FRAME declaring 2**62 bytes, holding 10
        path.write_bytes(b"\x80\x04" + declared + (2**62).to_bytes(8, "little") + b"x" * 10)
        with pytest.raises(LakdError, match="not a readable pickle"):
            safe_load_pickle(path)
