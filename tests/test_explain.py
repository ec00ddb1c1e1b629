"""lakd explain: PNG written at the promised pixel size, similarity numbers, user errors, loading checkpoints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lakd.data import load_splits
from lakd.errors import LakdError
from lakd.explain import explain, grid_size, load_explain_inputs, teacher_stage_for
from lakd.models import build_model
from lakd.models.base import StagedModel

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(name: str = "resnet8", num_classes: int = 10, seed: int = 0) -> StagedModel:
    torch.manual_seed(seed)
    return build_model(name, num_classes).eval()


def images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("with_before", [False, True])
def test_png_has_grid_size(tmp_path: Path, with_before: bool) -> None:
    out = tmp_path / "sub" / "explain.png"
    before = tiny(seed=2) if with_before else None
    result = explain(tiny("vgg8", seed=0), tiny(seed=1), images(2), MEAN, STD, out, before=before,
                     labels=["a", "b"], title="t", cell_px=64)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == grid_size(2, 3, with_before, cell_px=64)  # resnet8: 3 stages = 3 modules
    assert result["images"] == 2 and result["path"] == str(out)
    # vgg8 has 5 stages; LAKD pairs module k of 3 with the teacher stage at the same relative depth.
    assert [m["teacher_stage"] for m in result["modules"]] == [1, 3, 4]
    assert all((m["similarity_before"] is not None) == with_before for m in result["modules"])
    assert json.loads(out.with_suffix(".json").read_text())["modules"] == result["modules"]


def test_grid_size_grows_with_content() -> None:
    w, h = grid_size(2, 3, False)
    assert grid_size(3, 3, False)[1] > h and grid_size(2, 3, True)[0] > w and grid_size(2, 4, False)[0] > w


def test_teacher_stage_matching() -> None:
    assert [teacher_stage_for(k, 3, 3) for k in range(3)] == [0, 1, 2]
    assert [teacher_stage_for(k, 4, 3) for k in range(4)] == [0, 1, 2, 2]
    assert [teacher_stage_for(k, 2, 4) for k in range(2)] == [1, 3]


def test_similarity_range_and_self(tmp_path: Path) -> None:
    teacher = tiny(seed=0)
    result = explain(teacher, tiny(seed=1), images(3), MEAN, STD, tmp_path / "a.png", cell_px=32)
    for m in result["modules"]:
        assert 0.0 <= m["similarity"] <= 1.0 + 1e-6  # cosine of non-negative maps
        assert len(m["similarity_per_image"]) == 3
    float_images = torch.from_numpy(images(3)).float() / 255  # float input in [0, 1] works the same
    same = explain(teacher, copy.deepcopy(teacher), float_images, MEAN, STD, tmp_path / "b.png",
                   before=tiny(seed=1), cell_px=32)
    for m in same["modules"]:
        assert m["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= m["similarity_before"] < 1.0 - 1e-5


def test_explain_user_errors(tmp_path: Path) -> None:
    out = tmp_path / "e.png"
    with pytest.raises(LakdError, match="N = 0"):
        explain(tiny(), tiny(), images(2)[:0], MEAN, STD, out)
    with pytest.raises(LakdError, match="100 classes"):
        explain(tiny(num_classes=100), tiny(), images(1), MEAN, STD, out)
    with pytest.raises(LakdError, match="modules"):
        explain(tiny(), tiny(), images(1), MEAN, STD, out, before=tiny("mobilenetv2"))
    with pytest.raises(LakdError, match=r"\(N, H, W, 3\)"):
        explain(tiny(), tiny(), images(1).transpose(0, 3, 1, 2), MEAN, STD, out)
    assert not out.exists()


def save_ckpt(path: Path, model: StagedModel, arch: str, num_classes: int = 10, **extra: object) -> Path:
    data = {"dataset": "synthetic", "val_size": 0, "split_seed": 0, "synthetic_size": 40, "synthetic_classes": 10}
    meta = {"arch": arch, "num_classes": num_classes, "dataset": "synthetic", "data": data, **extra}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return path


def test_load_explain_inputs_from_checkpoints(tmp_path: Path) -> None:
    teacher, student, before = tiny(seed=0), tiny(seed=1), tiny(seed=2)
    t = save_ckpt(tmp_path / "t.pt", teacher, "resnet8")
    s = save_ckpt(tmp_path / "s.pt", student, "resnet8", distill={"method": "lakd", "teacher_arch": "resnet8",
                                                                   "params": {"split": "stage"}})
    b = save_ckpt(tmp_path / "b.pt", before, "resnet8")
    inputs = load_explain_inputs(t, s, b, num_images=3, seed=5)
    assert inputs.images.shape == (3, 32, 32, 3) and inputs.images.dtype == np.uint8
    assert len(inputs.labels) == 3 and inputs.dataset == "synthetic" and "lakd" in inputs.title
    assert len(inputs.mean) == 3 and len(inputs.std) == 3
    torch.testing.assert_close(inputs.student.state_dict(), student.state_dict())
    assert not inputs.teacher.training
    first = load_explain_inputs(t, s, num_images=2)  # no seed: the first test images, as lakd eval sees them
    test = load_splits("synthetic", val_size=0, synthetic_size=40).test
    np.testing.assert_array_equal(first.images, test.x[:2])
    assert first.before is None and first.labels == [test.classes[int(c)] for c in test.y[:2]]
    out = tmp_path / "x.png"
    result = explain(inputs.teacher, inputs.student, inputs.images, inputs.mean, inputs.std, out,
                     before=inputs.before, labels=inputs.labels, title=inputs.title, cell_px=32)
    with Image.open(out) as im:
        assert im.size == grid_size(3, len(result["modules"]), True, cell_px=32)


def test_load_explain_inputs_errors(tmp_path: Path) -> None:
    t = save_ckpt(tmp_path / "t.pt", tiny(), "resnet8")
    s = save_ckpt(tmp_path / "s.pt", tiny(), "resnet8")
    with pytest.raises(LakdError, match=">= 1"):
        load_explain_inputs(t, s, num_images=0)
    t100 = save_ckpt(tmp_path / "t100.pt", tiny(num_classes=100), "resnet8", num_classes=100)
    with pytest.raises(LakdError, match="100 classes"):
        load_explain_inputs(t100, s)
    unknown = save_ckpt(tmp_path / "u.pt", tiny(), "resnet9000")
    with pytest.raises(LakdError, match="unknown architecture 'resnet9000'"):
        load_explain_inputs(unknown, s)
    with pytest.raises(LakdError, match="does not exist"):
        load_explain_inputs(tmp_path / "missing.pt", s)
    with pytest.raises(LakdError, match="test split has"):
        load_explain_inputs(t, s, num_images=10_000)
