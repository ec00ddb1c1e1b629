"""``lakd.export``: the student alone, reloadable with identical outputs; tiny models and synthetic data only."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from lakd.errors import LakdError
from lakd.export import LogitsOnly, export_checkpoint, load_exported
from lakd.models import build_model

safetensors = pytest.importorskip("safetensors", reason="export needs the optional 'safetensors' (lakd[export])")

META = {"arch": "resnet8", "num_classes": 10, "dataset": "synthetic", "classes": [f"c{i}" for i in range(10)],
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "image_size": 32, "data": {"path": "/home/me/data"}}


def trained_like(arch: str = "resnet8") -> torch.nn.Module:
    """A model whose BatchNorm running stats are no longer the defaults, so a lost buffer would show."""
    torch.manual_seed(0)
    model = build_model(arch, 10).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32) * 3 + 1)
    return model.eval()


@pytest.fixture
def ckpt(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = trained_like()
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "meta": META}, path)
    return path, model


def stored_keys(path: Path) -> set[str]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_safetensors_round_trip_gives_identical_outputs(ckpt: tuple[Path, torch.nn.Module]) -> None:
    path, model = ckpt
    info = export_checkpoint(path)
    out = path.with_suffix(".safetensors")
    assert info["path"] == str(out) and info["format"] == "safetensors" and info["arch"] == "resnet8"
    assert info["bytes"] == out.stat().st_size
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    loaded, meta = load_exported(out)
    assert not loaded.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])
        assert torch.equal(LogitsOnly(loaded)(x), model(x)[0])
    assert stored_keys(out) == set(model.state_dict())
    assert {k: meta[k] for k in ("arch", "num_classes", "classes", "mean", "std", "image_size", "dataset")} == {
        k: META[k] for k in ("arch", "num_classes", "classes", "mean", "std", "image_size", "dataset")}
    assert meta["source_sha256"] == info["source_sha256"] and "lakd_version" in meta
    assert "data" not in meta  # local paths of the training machine stay behind


def test_distillation_checkpoint_exports_the_student_only(tmp_path: Path) -> None:
    from lakd.config import RunConfig, build_config
    from lakd.data import load_splits
    from lakd.distill import build_distiller
    from lakd.engine import Trainer, resolve_runtime

    torch.manual_seed(0)
    cfg = build_config(RunConfig, overrides=["train.epochs=1", "train.progress=false", "data.batch_size=16"])
    splits = load_splits("synthetic", val_size=16, synthetic_size=32, test_limit=16)
    d = build_distiller("crd", build_model("resnet8", 10), build_model("resnet14", 10), {}, total_epochs=1,
                        train_labels=torch.as_tensor(splits.train.y))
    meta = {**META, "distill": {"method": "crd", "teacher": "/home/me/t.pt", "teacher_arch": "resnet14"}}
    Trainer(d, cfg, splits, resolve_runtime("cpu", "fp32", "false"), tmp_path, meta, log=lambda s: None).fit()
    src = tmp_path / "last.pt"
    ckpt = torch.load(src, weights_only=True)
    extras = {k for k in ckpt["task"] if not k.startswith("student_model.")}
    assert any(k.startswith(("embed_s.", "embed_t.", "contrast.")) for k in extras)  # the trainer keeps them

    out = tmp_path / "student.safetensors"
    export_checkpoint(src, out)
    keys = stored_keys(out)
    assert keys == set(d.student().state_dict()) == set(ckpt["model"])
    assert not any(k.startswith(("embed", "contrast", "teacher", "student_model", "projector", "aux")) for k in keys)
    loaded, exported_meta = load_exported(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], d.student().eval()(x)[0])
    assert exported_meta["distill"] == {"method": "crd", "teacher_arch": "resnet14"}


def test_existing_output_needs_force_and_the_checkpoint_is_never_overwritten(
    ckpt: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = ckpt
    out = path.parent / "m.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(LakdError, match="--force"):
        export_checkpoint(path, out)
    assert out.read_bytes() == b"old"
    export_checkpoint(path, out, force=True)
    assert stored_keys(out)
    with pytest.raises(LakdError, match="checkpoint itself"):
        export_checkpoint(path, path, force=True)
    assert torch.load(path, weights_only=True)["meta"]["arch"] == "resnet8"


def test_bad_format_and_bad_inputs_are_lakd_errors(tmp_path: Path, ckpt: tuple[Path, torch.nn.Module]) -> None:
    path, _ = ckpt
    with pytest.raises(LakdError, match="safetensors, onnx"):
        export_checkpoint(path, fmt="tflite")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(LakdError, match="cannot be loaded safely"):
        export_checkpoint(corrupt)
    assert not corrupt.with_suffix(".safetensors").exists()
    with pytest.raises(LakdError, match="does not exist"):
        export_checkpoint(tmp_path / "missing.pt")

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(LakdError, match="cannot be read as safetensors"):
        load_exported(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(LakdError, match="not written by lakd export"):
        load_exported(foreign)


def test_missing_optional_packages_say_what_to_install(
    ckpt: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail as if it were not installed
    with pytest.raises(LakdError, match=r"pip install 'lakd\[onnx\]'"):
        export_checkpoint(ckpt[0], fmt="onnx")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(LakdError, match=r"pip install 'lakd\[export\]'"):
        export_checkpoint(ckpt[0])


def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(ckpt: tuple[Path, torch.nn.Module]) -> None:
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the optional 'onnx' package (lakd[onnx])")
    ort = pytest.importorskip("onnxruntime", reason="checking the ONNX graph needs 'onnxruntime' (lakd[onnx])")
    path, model = ckpt
    info = export_checkpoint(path, fmt="onnx")
    out = path.with_suffix(".onnx")
    assert info["path"] == str(out) and info["opset"] >= 17

    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch axis is symbolic
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["arch"] == '"resnet8"' and props["mean"] == "[0.5, 0.4, 0.3]" and "source_sha256" in props

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # a batch size other than the traced one
    (logits,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(LakdError, match="onnxruntime"):
        load_exported(out)


def test_cli_export_writes_student_and_refuses_overwrite(
    ckpt: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lakd.cli import main

    path, _ = ckpt
    out = tmp_path / "student.safetensors"
    assert main(["export", "--ckpt", str(path), "--out", str(out)]) == 0
    assert f"-> {out} (safetensors" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["export", "--ckpt", str(path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "m.bin"), "--format", "tflite"]) == 2
    assert "safetensors, onnx" in capsys.readouterr().err
