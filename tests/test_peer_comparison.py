"""benchmarks/peer_comparison.py: the peer-style per-sample data path and loop, on tiny synthetic data; the ratios
and targets over every way; the torchdistill ways' 'not run' / 'failed' records (no peer venv needed); the
lakd-side torchdistill glue (teacher key renaming, the per-sample dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from lakd.models import build_model
from tests.scripts import load_script


def _load() -> ModuleType:
    return load_script("peer_comparison.py")


def _arrays(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_per_sample_dataset_normalises_and_only_flips_without_padding() -> None:
    pc = _load()
    x, y = _arrays()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = pc.PerSampleCIFAR(x, y, mean, std, padding=0)
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == int(y[3])
    ref = (torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std)[:, None, None]
    assert torch.allclose(img, ref, atol=1e-5) or torch.allclose(img, ref.flip(2), atol=1e-5)
    assert pc.PerSampleCIFAR(x, y, mean, std)[0][0].shape == (3, 32, 32)  # pad-4 crop keeps 32x32


def test_plain_loop_runs_limited_steps_and_reports() -> None:
    pc = _load()
    x, y = _arrays()
    torch.manual_seed(0)
    ds = pc.PerSampleCIFAR(x, y, (0.5,) * 3, (0.25,) * 3)
    out = pc.run_plain(ds, build_model("resnet8", 10), build_model("resnet8", 10), workers=0, steps=2, batch_size=4)
    assert out["steps"] == 2 and out["images"] == 8 and out["img_per_s"] > 0
    assert out["precision"] == "fp32" and np.isfinite(out["train_loss"])
    assert out["status"] == "ok"
    ways = {"lakd_kd": {"img_per_s": 300.0}, "lakd_lakd": {"img_per_s": 285.0}, "plain": out | {"img_per_s": 100.0}}
    ratios = pc.ratios(ways)
    assert ratios["lakd_kd_over_plain"] == 3.0 and ratios["lakd_lakd_over_lakd_kd"] == 0.95
    assert ratios["lakd_kd_over_torchdistill"] is None  # torchdistill not among the ways


def _ok(rate: float, **extra: object) -> dict[str, object]:
    return {"status": "ok", "img_per_s": rate, "precision": "fp32", "memory_format": "contiguous", "steps": 3,
            "images": 384, "train_s": 1.0, **extra}


def test_ratios_with_every_way_pick_each_sides_best_and_check_targets() -> None:
    pc = _load()
    ways = {"lakd_kd": _ok(900.0), "lakd_kd_fp32": _ok(600.0), "lakd_kd_fp32_nchw": _ok(400.0),
            "lakd_lakd": _ok(855.0), "torchdistill": _ok(250.0, teacher_mode="train"),
            "torchdistill_teacher_eval": _ok(300.0, teacher_mode="eval"), "plain": _ok(450.0)}
    terms = pc.ratio_terms(ways)
    assert set(terms) == set(pc.RATIOS) == set(pc.TARGETS)
    r = pc.ratios(ways)
    assert r["lakd_kd_over_torchdistill"] == 3.6 and terms["lakd_kd_over_torchdistill"]["met"] is True
    best = terms["lakd_best_over_torchdistill_best"]  # the fastest way of each side
    assert (best["numerator"], best["denominator"], best["value"]) == ("lakd_kd", "torchdistill_teacher_eval", 3.0)
    assert best["met"] is True  # >= target, not >
    assert r["lakd_kd_fp32_over_torchdistill"] == 2.4 and r["lakd_kd_fp32_over_torchdistill_best"] == 2.0
    assert r["lakd_kd_fp32_nchw_over_torchdistill"] == 1.6
    assert terms["lakd_kd_fp32_nchw_over_torchdistill"]["target"] is None
    assert terms["lakd_kd_fp32_nchw_over_torchdistill"]["met"] is None
    assert r["lakd_lakd_over_lakd_kd"] == 0.95 and terms["lakd_lakd_over_lakd_kd"]["met"] is True
    assert r["lakd_kd_over_plain"] == 2.0
    ways["lakd_lakd"] = _ok(850.0)
    assert pc.ratio_terms(ways)["lakd_lakd_over_lakd_kd"]["met"] is False
    # a long run's compiled teacher: its own ratios, and it can be lakd's best way
    ways |= {"lakd_kd_compiled": _ok(1000.0), "lakd_kd_fp32_compiled": _ok(450.0), "lakd_lakd_compiled": _ok(940.0)}
    r, terms = pc.ratios(ways), pc.ratio_terms(ways)
    assert r["lakd_kd_compiled_over_torchdistill"] == 4.0 and r["lakd_kd_fp32_compiled_over_torchdistill"] == 1.8
    assert r["lakd_kd_fp32_compiled_over_torchdistill_best"] == 1.5
    assert terms["lakd_kd_fp32_compiled_over_torchdistill_best"]["met"] is True
    assert r["lakd_lakd_compiled_over_lakd_kd_compiled"] == 0.94
    assert terms["lakd_best_over_torchdistill_best"]["numerator"] == "lakd_kd_compiled"
    for name in ("lakd_kd_compiled", "lakd_kd_fp32_compiled", "lakd_lakd_compiled"):
        del ways[name]
    text = pc.markdown({"ways": ways, "targets": pc.ratio_terms(ways)})
    assert "| torchdistill | fp32 / contiguous | train | 3 | 384 | 1.0 | 250 |" in text
    assert "lakd_lakd_over_lakd_kd: 0.94x (lakd_lakd / lakd_kd) [target >= 0.95x, NOT met]" in text
    assert "lakd_kd_fp32_nchw_over_torchdistill: 1.60x (lakd_kd_fp32_nchw / torchdistill) [no target]" in text


def test_ratios_skip_ways_that_did_not_run() -> None:
    pc = _load()
    ways = {"lakd_kd": _ok(900.0), "torchdistill": {"status": "not run", "reason": "no venv"},
            "torchdistill_teacher_eval": {"status": "failed", "reason": "boom", "img_per_s": 1.0}}
    terms = pc.ratio_terms(ways)
    for key in ("lakd_kd_over_torchdistill", "lakd_best_over_torchdistill_best", "lakd_kd_fp32_over_torchdistill",
                "lakd_lakd_over_lakd_kd", "lakd_kd_over_plain"):
        assert terms[key]["value"] is None and terms[key]["met"] is None, key
    ways["torchdistill_teacher_eval"] = _ok(450.0)
    best = pc.ratio_terms(ways)["lakd_best_over_torchdistill_best"]
    assert (best["denominator"], best["value"], best["met"]) == ("torchdistill_teacher_eval", 2.0, False)
    text = pc.markdown({"ways": ways, "targets": pc.ratio_terms(ways)})
    assert "| torchdistill | - | - | - | - | - | not run: no venv |" in text
    assert "lakd_kd_over_torchdistill: n/a [target >= 3.0x]" in text


def test_torchdistill_not_run_without_the_peer_venv(tmp_path: Path) -> None:
    pc = _load()
    missing = tmp_path / "no-venv" / "bin" / "python"
    out = pc.torchdistill_way("torchdistill", tmp_path, tmp_path / "t.pt", workers=0, steps=2, python=missing)
    assert out["status"] == "not run" and str(missing) in out["reason"]
    assert out["how_to_run"].startswith("bash benchmarks/make_torchdistill_venv.sh")
    assert out["teacher_mode_requested"] == "train" and "img_per_s" not in out
    assert pc.torchdistill_way("torchdistill_teacher_eval", tmp_path, tmp_path, 0, None,
                               python=missing)["teacher_mode_requested"] == "eval"


def test_torchdistill_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    pc = _load()
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback: something' >&2\necho 'ImportError: no torchdistill' >&2\nexit 3\n")
    fake.chmod(0o755)
    out = pc.run_torchdistill("eval", tmp_path, tmp_path / "t.pt", workers=0, steps=2, python=fake)
    assert out["status"] == "failed" and out["exit_code"] == 3
    assert out["reason"] == "ImportError: no torchdistill" and "--teacher-mode eval" in out["command"]
    assert "--steps 2" in out["command"] and "--out" not in out["command"]


def test_kept_malloc_way_gives_torchdistill_lakds_allocator_settings(tmp_path: Path) -> None:
    pc = _load()
    fake = tmp_path / "python"  # fails after printing the allocator variables it was given
    fake.write_text("#!/bin/sh\necho \"mmap=$MALLOC_MMAP_THRESHOLD_ trim=$MALLOC_TRIM_THRESHOLD_\" >&2\nexit 3\n")
    fake.chmod(0o755)
    out = pc.torchdistill_way("torchdistill_kept_malloc", tmp_path, tmp_path / "t.pt", 0, 2, python=fake)
    assert out["reason"] == f"mmap={32 << 20} trim={1 << 30}"  # the values lakd.engine.host_memory sets
    assert out["command"].startswith(f"MALLOC_MMAP_THRESHOLD_={32 << 20} MALLOC_TRIM_THRESHOLD_={1 << 30} ")
    plain = pc.torchdistill_way("torchdistill", tmp_path, tmp_path / "t.pt", 0, 2, python=fake)
    assert plain["reason"] == "mmap= trim="  # the default way runs torchdistill's process as it comes


def test_main_records_not_run_torchdistill_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pc = _load()
    monkeypatch.setattr(pc, "PEER_PYTHON", tmp_path / "missing" / "python")
    out = tmp_path / "result.json"
    assert pc.main(["--ways", "torchdistill,torchdistill_teacher_eval", "--steps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["smoke_only"] is True and result["steps_limit"] == 1
    assert {w["status"] for w in result["ways"].values()} == {"not run"}
    assert result["ratios"]["lakd_kd_over_torchdistill"] is None
    assert result["targets"]["lakd_kd_over_torchdistill"]["target"] == 3.0
    assert "teacher_mode" in result["torchdistill_notes"]
    with pytest.raises(SystemExit):
        pc.main(["--ways", "torchdistil", "--out", str(out)])


def _glue() -> ModuleType:
    return load_script("torchdistill/glue_lakd.py")


def test_teacher_keys_map_onto_torchdistill_resnet_names() -> None:
    glue = _glue()
    state = build_model("resnet56", 10).state_dict()
    mapped = glue.lakd_to_torchdistill_resnet(state)
    assert len(mapped) == len(state) == 344  # one to one, tensors untouched
    assert mapped["conv1.weight"] is state["stem.0.weight"] and mapped["bn1.running_var"] is state["stem.1.running_var"]
    assert mapped["layer2.0.downsample.0.weight"] is state["stages.1.0.shortcut.0.weight"]
    assert mapped["layer3.8.bn2.bias"] is state["stages.2.8.bn2.bias"]
    assert mapped["fc.weight"] is state["head.fc.weight"]
    assert all(k.split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"} for k in mapped)
    with pytest.raises(KeyError):
        glue.lakd_to_torchdistill_resnet({"stem.0.weight": state["stem.0.weight"], "extra.w": torch.zeros(1)})


def test_lakd_cifar_dataset_serves_pil_images_like_torchvision() -> None:
    glue = _glue()
    ds = glue.LakdCIFAR("synthetic", split="train", val_size=64, split_seed=0)
    img, target = ds[0]
    assert len(ds) == 512 - 64 and img.size == (32, 32) and img.mode == "RGB" and isinstance(target, int)
    ds_t = glue.LakdCIFAR("synthetic", split="val", val_size=64, transform=lambda im: np.asarray(im).shape,
                          target_transform=lambda t: t + 100)
    assert len(ds_t) == 64 and ds_t[1][0] == (32, 32, 3) and ds_t[1][1] >= 100
