"""Trainer, schedule, checkpoints and config on synthetic data with tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lakd.config import RunConfig, build_config, parse_override
from lakd.data import load_splits
from lakd.engine import SupervisedTask, Trainer, atomic_torch_save, load_checkpoint, resolve_runtime, seed_everything
from lakd.engine.metrics import topk_correct
from lakd.engine.schedule import lr_at
from lakd.errors import LakdError
from lakd.models import build_model


def tiny_config(tmp_path: Path, epochs: int = 2, **overrides: object) -> RunConfig:
    items = [f"{k}={v}" for k, v in overrides.items()]
    return build_config(RunConfig, overrides=[
        "model.name=resnet8", "data.dataset=synthetic", "data.synthetic_size=320", "data.val_size=32",
        "data.batch_size=32", f"train.epochs={epochs}", "train.progress=false", "train.precision=fp32",
        "optim.lr=0.1", f"out={tmp_path}", *items,
    ])


def make_trainer(cfg: RunConfig, out: Path | None) -> Trainer:
    runtime = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.train.channels_last)
    d = cfg.data
    splits = load_splits(d.dataset, d.root, d.val_size, d.split_seed, synthetic_size=d.synthetic_size)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model.name, splits.num_classes)
    meta = {"arch": cfg.model.name, "num_classes": splits.num_classes, "dataset": "synthetic"}
    return Trainer(SupervisedTask(model), cfg, splits, runtime, out, meta, log=lambda s: None)


def test_schedules_by_hand() -> None:
    assert lr_at(0, 0.1, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(5, 0.1, 10, "cosine") == pytest.approx(0.05)
    assert lr_at(10, 0.1, 10, "cosine", min_lr=0.01) == pytest.approx(0.01)
    assert lr_at(0.5, 0.1, 10, "cosine", warmup_epochs=1) == pytest.approx(0.1 * 0.501)
    assert lr_at(1, 0.1, 10, "cosine", warmup_epochs=1) == pytest.approx(0.1)
    assert lr_at(149.9, 0.05, 240, "step", milestones=[150, 180, 210]) == pytest.approx(0.05)
    assert lr_at(185, 0.05, 240, "step", milestones=[150, 180, 210]) == pytest.approx(0.0005)


def test_topk_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    y = torch.tensor([1, 2, 0])
    assert topk_correct(logits, y, (1, 2, 5)) == [1, 2, 3]


def test_training_learns_and_writes_run_files(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=3)
    trainer = make_trainer(cfg, tmp_path)
    summary = trainer.fit()
    assert summary["epochs"] == 3
    assert summary["best_val_top1"] > 50.0  # chance is 10%: the loop really learns
    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv"):
        assert (tmp_path / name).is_file()
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 3
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("epoch", "train_ce", "lr", "img_per_s", "peak_mem_mb", "val_top1", "val_top5", "test_top1"):
        assert col in header
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["meta"]["arch"] == "resnet8" and ckpt["epoch"] == summary["best_epoch"]
    model = build_model("resnet8", 10)
    model.load_state_dict(ckpt["model"])


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    full = make_trainer(tiny_config(tmp_path / "full", epochs=3), tmp_path / "full")
    (tmp_path / "full").mkdir()
    full.fit()
    (tmp_path / "part").mkdir()
    part = make_trainer(tiny_config(tmp_path / "part", epochs=3), tmp_path / "part")
    part.fit(stop_after=2)  # as if killed after two epochs
    torch.manual_seed(12345)  # garble the global RNG: resume must restore it
    resumed = make_trainer(tiny_config(tmp_path / "part", epochs=3), tmp_path / "part")
    resumed.resume_from(tmp_path / "part" / "last.pt")
    assert resumed.start_epoch == 2
    resumed.fit()
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert len(resumed.metrics.rows) == 3


def test_nan_loss_stops_with_the_term_name(tmp_path: Path) -> None:
    trainer = make_trainer(tiny_config(tmp_path, epochs=1), None)
    original = trainer.task.forward_train

    def poisoned(x: torch.Tensor, y: torch.Tensor, epoch: float):  # noqa: ANN202
        logits, losses = original(x, y, epoch)
        return logits, {**losses, "feat": torch.tensor(math.nan)}

    trainer.task.forward_train = poisoned  # type: ignore[method-assign]
    with pytest.raises(LakdError, match="'feat' became nan"):
        trainer.fit()


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    atomic_torch_save({"model": {"w": torch.ones(2)}}, path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        atomic_torch_save({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_load_refuses_malicious_and_torn_checkpoints(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LakdError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    atomic_torch_save({"model": {"w": torch.ones(1000)}}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LakdError, match="corrupt"):
        load_checkpoint(tmp_path / "torn.pt")


def test_config_errors_are_clear() -> None:
    with pytest.raises(LakdError, match="did you mean 'lr'"):
        build_config(RunConfig, overrides=["optim.lrr=0.1"])
    with pytest.raises(LakdError, match="optim.lr.*> 0"):
        build_config(RunConfig, overrides=["optim.lr=-1"])
    with pytest.raises(LakdError, match="expected an integer"):
        build_config(RunConfig, overrides=["train.epochs=abc"])
    with pytest.raises(LakdError, match="not one of"):
        build_config(RunConfig, overrides=["schedule.name=linear"])
    assert parse_override("schedule.milestones=[1, 2]") == ("schedule.milestones", [1, 2])
    cfg = build_config(RunConfig, overrides=["schedule.milestones=[1, 2]", "optim.lr=1e-2"])
    assert cfg.schedule.milestones == [1.0, 2.0] and cfg.optim.lr == 0.01


def test_yaml_is_data_only(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(LakdError, match="not valid YAML"):
        build_config(RunConfig, files=[str(evil)])


def test_bf16_autocast_channels_last_path_runs(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, **{"train.precision": "bf16", "train.channels_last": "true"})
    trainer = make_trainer(cfg, None)
    assert trainer.runtime.amp_dtype is torch.bfloat16 and trainer.runtime.channels_last
    summary = trainer.fit()
    assert summary["last_test_top1"] is not None


def test_atomic_save_gives_a_normal_file_mode(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        atomic_torch_save({"model": {}}, tmp_path / "c.pt")
    finally:
        os.umask(mask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


class Payload:
    """Unpickling this would call print: a stand-in for a malicious checkpoint."""

    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_a_refused_checkpoint_is_explained_without_torchs_advice(tmp_path, capsys) -> None:
    import collections
    import pickle

    from lakd.engine import load_checkpoint

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Payload()}))
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "x": collections.OrderedDict(a=Payload)}, other)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (evil, other):
        with pytest.raises(LakdError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert "can run code" in message and "weights_only" not in message and "\x1b" not in message
    with pytest.raises(LakdError, match="ends early"):
        load_checkpoint(empty)
    captured = capsys.readouterr()
    assert "pwned" not in captured.out and "pickle protocol" not in captured.err


def test_a_state_dict_mismatch_names_the_keys(tmp_path) -> None:
    from lakd.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
    from lakd.models import build_model

    state = build_model("resnet8", 10).state_dict()
    state.pop("head.fc.weight")
    state["extra.w"] = torch.zeros(1)
    state["stem.0.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "mismatch.pt"
    torch.save({"model": state, "meta": {"arch": "resnet8", "num_classes": 10}}, path)
    ckpt = load_checkpoint(path)
    with pytest.raises(LakdError) as info:
        model_from_checkpoint(ckpt, checkpoint_meta(ckpt, path), "checkpoint")
    message = str(info.value)
    assert "missing: head.fc.weight" in message and "unexpected: extra.w" in message
    assert "wrong shape: stem.0.weight (3, 3, 3, 3) vs" in message and "\n" not in message


def test_max_steps_per_epoch_cuts_epochs_not_the_training_set(tmp_path: Path) -> None:
    # 288 training images at batch 32: 9 steps an epoch; capped at 3, each epoch takes 3 steps over the whole set
    # and the schedule runs over the shortened epochs
    trainer = make_trainer(tiny_config(tmp_path, epochs=2, **{"train.max_steps_per_epoch": 3}), None)
    assert trainer.train_loader.num_images == 288 and len(trainer.train_loader) == 9
    seen_lrs: list[float] = []
    original = trainer.task.train_step

    def counting(*args: object, **kwargs: object):  # noqa: ANN202
        seen_lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    trainer.task.train_step = counting  # type: ignore[method-assign]
    trainer.fit()
    assert len(seen_lrs) == 6
    assert seen_lrs[0] == pytest.approx(0.1) and seen_lrs[3] == pytest.approx(lr_at(1, 0.1, 2, "cosine"))
    assert seen_lrs[2] == pytest.approx(lr_at(2 / 3, 0.1, 2, "cosine"))  # 2 of the epoch's 3 steps, not of 9
    with pytest.raises(LakdError, match="train.max_steps_per_epoch.*>= 1"):
        build_config(RunConfig, overrides=["train.max_steps_per_epoch=0"])
