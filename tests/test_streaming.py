"""Streaming image folders (the ImageNet path): file lists, hand-written transforms, the threaded loader.

A tiny ImageFolder of JPEGs of mixed sizes stands in for ImageNet; transforms are checked against values
computed independently, and the loader against ``BatchLoader``'s contract (order, resume, DDP shards).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lakd.bench import load_protocol
from lakd.cli import main
from lakd.config import DistillRunConfig, build_config
from lakd.data import (
    Batching,
    BatchLoader,
    FileList,
    ImageArrays,
    StreamLoader,
    as_arrays,
    load_splits,
    make_loader,
    scan_file_list,
)
from lakd.data.transforms import centre_crop_box, load_eval_image, load_train_image, random_resized_crop_box
from lakd.distill import make_params
from lakd.errors import LakdError
from lakd.explain import load_explain_inputs

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CLASSES = ("ant", "bee", "cat")


def write_folder(base: Path, per_class: dict[str, int], seed: int = 0, classes: tuple[str, ...] = CLASSES) -> None:
    """``base/<split>/<class>/<i>.JPEG``: random-size (40-90 px) images with a class-dependent colour."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            folder = base / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 91, 2))
                img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(folder / f"{i:02d}.JPEG", quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tiny-imagenet")
    write_folder(base, {"train": 6, "val": 3})
    return base


@pytest.fixture(scope="module")
def train_files(folder: Path) -> FileList:
    return scan_file_list(folder / "train", image_size=32)


def test_scan_is_sorted_and_labelled_by_sorted_folder_names(folder: Path, train_files: FileList) -> None:
    assert train_files.classes == list(CLASSES) and len(train_files) == 18
    assert train_files.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert [Path(f).name for f in train_files.files[:6]] == [f"{i:02d}.JPEG" for i in range(6)]
    sub = train_files.subset(np.array([7, 0]))
    assert sub.files == [train_files.files[7], train_files.files[0]] and sub.y.tolist() == [1, 0]
    assert scan_file_list(folder / "train", 32).files == train_files.files  # deterministic


def test_eval_transform_resize_and_centre_crop_by_hand(tmp_path: Path) -> None:
    """64x48 linear ramps -> shorter side 36 (= int(32*256/224)) -> 48x36 -> centre 32x32 at (left 8, top 2).

    Bilinear resampling keeps a linear ramp linear, so each output pixel is the ramp at the source coordinate
    its centre maps to: x = (j + 8 + 0.5) * 64/48 - 0.5, y = (i + 2 + 0.5) * 48/36 - 0.5.
    """
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([3 * xx + 20, 4 * yy + 10, np.full_like(xx, 77)], axis=-1).astype(np.uint8)
    path = tmp_path / "ramp.png"  # lossless: the expected values are exact
    Image.fromarray(img).save(path)
    out = load_eval_image(path, 32).astype(np.float64)
    assert out.shape == (32, 32, 3)
    j, i = np.arange(32), np.arange(32)
    red = 3 * ((j + 8.5) * 64 / 48 - 0.5) + 20
    green = 4 * ((i + 2.5) * 48 / 36 - 0.5) + 10
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(red, (32, 32)), atol=1.0)
    np.testing.assert_allclose(out[..., 1], np.broadcast_to(green[:, None], (32, 32)), atol=1.0)
    assert np.all(out[..., 2] == 77)
    # The same as resizing the whole image, then cropping (torchvision's Resize + CenterCrop order).
    resized = Image.fromarray(img).resize((48, 36), Image.Resampling.BILINEAR)
    full = np.asarray(resized.crop((8, 2, 40, 34)), dtype=np.float64)
    assert np.abs(out - full).max() <= 1
    assert centre_crop_box(64, 48, 32) == pytest.approx((8 * 64 / 48, 2 * 48 / 36, 40 * 64 / 48, 34 * 48 / 36))


def test_reduced_jpeg_decoding_matches_full_decoding(tmp_path: Path) -> None:
    """``Image.draft`` decodes a 400x300 JPEG at 1/8 scale for a 32-px crop; the result must match full decoding."""
    yy, xx = np.mgrid[0:300, 0:400]
    img = np.stack([xx * 255 // 399, yy * 255 // 299, (xx + yy) * 255 // 698], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(img).save(path, quality=95)
    with Image.open(path) as probe:
        assert probe.draft("RGB", (48, 36)) is not None and probe.size == (50, 38)  # the 1/8 path is taken
    fast, slow = load_eval_image(path, 32), load_eval_image(path, 32, draft=False)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0
    for seed in range(4):
        fast = load_train_image(path, 32, np.random.default_rng(seed))
        slow = load_train_image(path, 32, np.random.default_rng(seed), draft=False)
        assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3.0, seed


def test_random_resized_crop_boxes_and_fallback() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(90, 60, rng)
        assert 0 <= left and left + w <= 90 and 0 <= top and top + h <= 60
        assert 0.08 * 5400 * 0.8 <= w * h <= 5400
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25  # up to rounding of tiny boxes
    # No crop of a 400x4 strip has an aspect in [3/4, 4/3] and >= 8% of the area: centred fallback, aspect 4/3.
    assert random_resized_crop_box(400, 4, np.random.default_rng(0)) == (197, 0, 5, 4)


def test_train_augmentation_shape_and_determinism(train_files: FileList) -> None:
    def epoch(seed: int, e: int) -> list[tuple[torch.Tensor, ...]]:
        loader = StreamLoader(train_files, Batching(6, MEAN, STD, shuffle=True, augment=True, drop_last=True, seed=seed,
                              workers=2))
        loader.set_epoch(e)
        return list(loader)

    first = epoch(0, 0)
    assert len(first) == 3
    x, y = first[0]
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = epoch(0, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    other = epoch(0, 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0][0], epoch(1, 0)[0][0])
    # Evaluation transform, no shuffle: the files in order, each exactly as load_eval_image gives it.
    plain = next(iter(StreamLoader(train_files, Batching(4, MEAN, STD, workers=1))))[0]
    expected = torch.from_numpy(np.array(load_eval_image(train_files.files[1], 32))).permute(2, 0, 1).float()
    torch.testing.assert_close(plain[1], (expected / 255 - 0.5) / 0.25)


def test_same_order_and_length_as_batch_loader(train_files: FileList) -> None:
    """Order and step count come from the shared EpochBatches: identical to BatchLoader's for the same labels."""
    arrays = ImageArrays(np.zeros((18, 4, 4, 3), np.uint8), train_files.y, train_files.classes)
    for drop_last, batch in ((True, 4), (False, 4), (False, 5)):
        order = {"shuffle": True, "drop_last": drop_last, "seed": 3}
        stream = StreamLoader(train_files, Batching(batch, MEAN, STD, workers=2, **order))
        memory = BatchLoader(arrays, Batching(batch, MEAN, STD, return_index=True, **order))
        stream.return_index = True
        for e in (0, 1):
            stream.set_epoch(e)
            memory.set_epoch(e)
            got, want = list(stream), list(memory)
            assert len(stream) == len(memory) == len(got) == len(want)
            for (_, ys, i_s), (_, ym, i_m) in zip(got, want, strict=True):
                assert torch.equal(i_s, i_m) and torch.equal(ys, ym)


def test_two_ranks_see_the_halves_of_the_single_process_batch(train_files: FileList) -> None:
    kw = {"shuffle": True, "augment": True, "drop_last": True, "seed": 5, "return_index": True, "workers": 2}
    single = StreamLoader(train_files, Batching(6, MEAN, STD, **kw))
    single.set_epoch(2)
    ranks = []
    for r in (0, 1):
        loader = make_loader(train_files, Batching(3, MEAN, STD, rank=r, world_size=2, **kw))
        assert isinstance(loader, StreamLoader) and loader.global_batch_size == 6
        loader.set_epoch(2)
        ranks.append(list(loader))
    whole = list(single)
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 3
    for step, (x, y, index) in enumerate(whole):
        for r in (0, 1):
            rx, ry, ri = ranks[r][step]
            assert torch.equal(rx, x[r::2]) and torch.equal(ry, y[r::2]) and torch.equal(ri, index[r::2])
    with pytest.raises(ValueError, match="drop_last"):
        StreamLoader(train_files, Batching(3, MEAN, STD, rank=0, world_size=2))


def test_mid_epoch_resume_replays_the_same_batches(train_files: FileList) -> None:
    loader = StreamLoader(train_files, Batching(4, MEAN, STD, shuffle=True, augment=True, drop_last=True, seed=1,
                                                workers=2), prefetch=1)
    loader.set_epoch(3)
    full = list(loader)
    assert len(full) == 4
    tail = list(loader.iter_from(2))
    assert len(tail) == 2
    for a, b in zip(tail, full[2:], strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Stopping half-way (the trainer's SIGTERM path) and starting a new iterator leaves nothing behind.
    it = loader.iter_from(0)
    next(it)
    it.close()
    assert torch.equal(next(iter(loader.iter_from(1)))[0], full[1][0])


def test_splits_carve_limit_and_decode(folder: Path) -> None:
    splits = load_splits("imagefolder", path=folder, val_size=3, split_seed=0, stream=True, image_size=32,
                         train_limit=9, test_limit=4)
    assert splits.streamed and splits.image_size == 32 and splits.num_classes == 3
    assert isinstance(splits.train, FileList) and isinstance(splits.val, FileList)
    assert len(splits.train) == 9 and len(splits.val) == 3 and len(splits.test) == 4
    assert sorted(splits.val.y.tolist()) == [0, 1, 2]  # stratified: one per class
    assert not set(splits.val.files) & set(splits.train.files)
    again = load_splits("imagefolder", path=folder, val_size=3, split_seed=0, stream=True, image_size=32)
    assert again.val.files == splits.val.files  # the same seeded carve-out every time
    # Normalisation of a streamed folder: measured on a sample; one bright channel per class: ~0.31 each.
    assert all(0.2 < m < 0.45 for m in splits.mean) and all(0.1 < s < 0.45 for s in splits.std)
    picked = as_arrays(splits.test.subset(np.array([0, 1])))
    assert picked.x.shape == (2, 32, 32, 3)
    assert np.array_equal(picked.x[1], load_eval_image(splits.test.files[1], 32))
    with pytest.raises(LakdError, match="data.stream applies to dataset 'imagefolder' only"):
        load_splits("synthetic", stream=True)


def test_imagenet_resolves_data_root_env_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write_folder(root / "imagenet", {"train": 2, "val": 1})
    by_flag = load_splits("imagenet", root, val_size=0, image_size=32)
    assert len(by_flag.train) == 6 and len(by_flag.test) == 3 and by_flag.image_size == 32
    assert by_flag.mean == (0.485, 0.456, 0.406) and by_flag.std == (0.229, 0.224, 0.225)
    assert by_flag.test.files[0].startswith(str(root / "imagenet" / "val"))
    monkeypatch.setenv("LAKD_DATA", str(root))
    by_env = load_splits("imagenet", val_size=0)
    assert by_env.train.files == by_flag.train.files and by_env.image_size == 224
    by_path = load_splits("imagenet", val_size=0, path=str(root / "imagenet"))
    assert by_path.test.files == by_flag.test.files


def test_missing_or_malformed_folders_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(LakdError) as exc:
        load_splits("imagenet", root)
    msg = str(exc.value)
    assert f"no folder '{root / 'imagenet' / 'train'}'" in msg and "--data-root / data.root" in msg
    assert "train/<class>/*.JPEG" in msg and "val/<class>/*.JPEG" in msg
    monkeypatch.setenv("LAKD_DATA", str(root))
    with pytest.raises(LakdError, match=r"\$LAKD_DATA"):
        load_splits("imagenet")

    write_folder(root / "imagenet", {"train": 1, "val": 1})
    (root / "imagenet" / "train" / "dog").mkdir()
    (root / "imagenet" / "train" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(LakdError, match=r"class folder '.*dog' holds no images"):
        load_splits("imagenet", root, val_size=0)

    (root / "imagenet" / "train" / "dog" / "0.JPEG").write_bytes((root / "imagenet" / "val" / "ant" / "00.JPEG")
                                                                 .read_bytes())
    with pytest.raises(LakdError, match=r"differ .*only in train: \['dog'\], only in val: none"):
        load_splits("imagenet", root, val_size=0)

    flat = tmp_path / "flat"
    write_folder(flat, {"train": 1})
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(LakdError, match="has no class folders .*sort them into one folder per class"):
        load_splits("imagenet", path=str(flat), val_size=0)

    with pytest.raises(LakdError, match="needs data.path"):
        load_splits("imagefolder", stream=True)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": 2})
    bad = tmp_path / "train" / "bee" / "01.JPEG"
    bad.write_bytes(b"not a jpeg")
    loader = StreamLoader(scan_file_list(tmp_path / "train", 32), Batching(3, MEAN, STD, workers=2))
    with pytest.raises(LakdError, match=r"cannot decode image .*bee.01\.JPEG"):
        list(loader)


def test_train_distill_and_eval_end_to_end_on_a_streamed_folder(folder: Path, tmp_path: Path) -> None:
    data = ["--dataset", "imagefolder", f"data.path={folder}", "data.stream=true", "data.image_size=32",
            "data.workers=2", "data.val_size=3", "data.batch_size=5", "data.eval_batch_size=8", "--epochs", "1",
            "--no-progress", "--precision", "fp32", "--device", "cpu"]
    teacher = tmp_path / "teacher"
    assert main(["train", "--model", "resnet8", "--out", str(teacher), *data]) == 0
    student = tmp_path / "kd"
    assert main(["distill", "--method", "kd", "--student", "resnet8", "--teacher", str(teacher / "best.pt"),
                 "--out", str(student), *data]) == 0
    for run in (teacher, student):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and {"train_loss", "val_top1", "test_top1", "img_per_s"} <= set(rows[0])
        assert math.isfinite(rows[0]["train_loss"])
    summary = json.loads((student / "summary.json").read_text())
    assert summary["data"] == {"train": 15, "val": 3, "test": 9}
    assert main(["eval", "--ckpt", str(student / "best.pt"), "--json", "--data-path", str(folder)]) == 0
    # explain decodes just the images it shows (evaluation transform) from the streamed test split.
    inputs = load_explain_inputs(teacher / "best.pt", student / "best.pt", num_images=2, seed=0, data_path=str(folder))
    assert inputs.images.shape == (2, 32, 32, 3) and set(inputs.labels) <= set(CLASSES)


@pytest.mark.parametrize("method", ["vanilla", "kd", "at", "dkd", "reviewkd", "lakd", "crd"])
def test_imagenet_protocol_configs_are_valid(method: str) -> None:
    protocol = load_protocol("imagenet")
    assert set(protocol.default_methods) == {"vanilla", "kd", "at", "dkd", "reviewkd", "lakd", "crd"}
    entry = protocol.methods[method]
    files = [*protocol.configs, entry.config]
    root = Path(__file__).resolve().parents[1]
    cfg = build_config(DistillRunConfig, [str(root / f) for f in files], entry.overrides)
    assert cfg.model.name == "resnet18" and cfg.data.dataset == "imagenet" and cfg.train.epochs == 100
    assert cfg.data.batch_size == 256 and cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 1e-4
    assert cfg.schedule.name == "step" and cfg.schedule.milestones == [30, 60, 90]
    assert cfg.distill.method == method
    make_params(method, cfg.distill.params)
