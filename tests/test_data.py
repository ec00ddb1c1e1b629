"""Data layer: npz-of-JPEG decoding and cache, validation split, batched augmentation, loader, root resolution."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lakd.data import Batching, BatchLoader, carve_validation, load_cifar, load_splits, make_synthetic
from lakd.data.augment import apply_crop_flip, normalise, random_crop_flip
from lakd.data.cifar import ImageArrays
from lakd.data.root import decoded_cache_dir, resolve_data_root
from lakd.errors import LakdError


def write_jpeg_npz(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
    """Write the shared offline format: JPEG files joined, with offsets."""
    blobs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=y.astype(np.uint8), class_names=np.array(classes))


@pytest.fixture
def npz_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    train = make_synthetic(60, 10, seed=0)
    test = make_synthetic(20, 10, seed=1)
    write_jpeg_npz(root / "cifar10" / "train.npz", train.x, train.y, [f"c{i}" for i in range(10)])
    write_jpeg_npz(root / "cifar10" / "test.npz", test.x, test.y, [f"c{i}" for i in range(10)])
    return root


def test_npz_jpeg_decode_matches_pixels_and_is_cached(npz_root: Path) -> None:
    train = make_synthetic(60, 10, seed=0)
    arrays = load_cifar("cifar10", npz_root, "train")
    assert arrays.x.shape == (60, 32, 32, 3) and arrays.x.dtype == np.uint8
    np.testing.assert_array_equal(arrays.y, train.y)
    # Pixels equal an independent Pillow decode of the same JPEG bytes, and stay close to the originals.
    with np.load(npz_root / "cifar10" / "train.npz") as d:
        first = d["jpeg"][d["offsets"][5]:d["offsets"][6]].tobytes()
    np.testing.assert_array_equal(arrays.x[5], np.asarray(Image.open(io.BytesIO(first)).convert("RGB")))
    assert np.abs(arrays.x.astype(int) - train.x.astype(int)).mean() < 30
    assert arrays.classes[:2] == ["c0", "c1"]
    cache_files = list(decoded_cache_dir(npz_root).glob("*.npz"))
    assert len(cache_files) == 1
    # Second load comes from the cache (same arrays, the cache file untouched).
    stamp = cache_files[0].stat().st_mtime_ns
    again = load_cifar("cifar10", npz_root, "train")
    np.testing.assert_array_equal(again.x, arrays.x)
    assert cache_files[0].stat().st_mtime_ns == stamp


def test_decode_cache_is_checked_against_its_source_and_its_own_contents(npz_root: Path) -> None:
    import os

    source = npz_root / "cifar10" / "train.npz"
    first = load_cifar("cifar10", npz_root, "train")
    # The source replaced in place by other images of the same size, with its modification time kept:
    st = source.stat()
    other = make_synthetic(60, 10, seed=7)
    write_jpeg_npz(source, other.x, other.y, [f"c{i}" for i in range(10)])
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = load_cifar("cifar10", npz_root, "train")
    assert not np.array_equal(changed.x, first.x)
    np.testing.assert_array_equal(changed.y, other.y)
    # A foreign cache file under our name (its arrays not the ones recorded with it) is not used either.
    cache = next(decoded_cache_dir(npz_root).glob("*.npz"))
    with np.load(cache) as d:
        fields = {k: d[k] for k in d.files}
    fields["x"] = np.zeros_like(fields["x"])
    np.savez(cache, **fields)
    again = load_cifar("cifar10", npz_root, "train")
    np.testing.assert_array_equal(again.x, changed.x)


@pytest.mark.parametrize("writable", [False, True])
def test_the_cache_never_goes_into_the_data_folder_unless_asked(
    writable: bool, npz_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode cache is the user's cache folder's (issue 34: it was written into a writable data folder);
    ``$LAKD_CACHE`` puts it anywhere, the data folder included."""
    before = sorted(p.name for p in npz_root.rglob("*"))
    os.chmod(npz_root, 0o755 if writable else 0o555)
    try:
        cache = decoded_cache_dir(npz_root)
        assert npz_root not in cache.parents and Path(os.environ["XDG_CACHE_HOME"]) in cache.parents
        load_cifar("cifar10", npz_root, "test")
        assert sorted(p.name for p in npz_root.rglob("*")) == before  # nothing written into the data folder
        assert list(cache.glob("*.npz"))
    finally:
        os.chmod(npz_root, 0o755)
    monkeypatch.setenv("LAKD_CACHE", str(npz_root / "my-cache"))
    assert decoded_cache_dir(npz_root) == npz_root / "my-cache"


def test_corrupt_npz_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    (root / "cifar10" / "train.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    (root / "cifar10" / "test.npz").write_bytes(b"")
    with pytest.raises(LakdError, match="corrupt"):
        load_cifar("cifar10", root, "train")


def _tiny_npz_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A 4-image, 2-class npz-of-JPEG data root, and the arrays of its train.npz (to tamper with)."""
    root = tmp_path / "data"
    train = make_synthetic(4, 2, seed=0)
    write_jpeg_npz(root / "cifar10" / "train.npz", train.x, train.y, ["a", "b"])
    write_jpeg_npz(root / "cifar10" / "test.npz", train.x, train.y, ["a", "b"])
    with np.load(root / "cifar10" / "train.npz") as d:
        return root, {k: d[k] for k in d.files}


def test_corrupt_jpeg_inside_npz_names_the_image(tmp_path: Path) -> None:
    root, parts = _tiny_npz_root(tmp_path)
    parts["jpeg"] = parts["jpeg"].copy()
    parts["jpeg"][parts["offsets"][2] + 2: parts["offsets"][3]] = 7  # wreck image 2
    np.savez(root / "cifar10" / "train.npz", **parts)
    with pytest.raises(LakdError, match="image 2"):
        load_cifar("cifar10", root, "train")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(LakdError) as err:
        load_splits("cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "lakd data download cifar10" in msg and "--data-root" in msg


def test_data_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKD_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag")[0] == tmp_path / "flag"
    assert resolve_data_root(None)[0] == tmp_path / "env"
    monkeypatch.delenv("LAKD_DATA")
    root, how = resolve_data_root(None)
    assert "lakd" in str(root) and "default" in how


def test_validation_split_is_fixed_stratified_and_disjoint() -> None:
    data = make_synthetic(200, 10, seed=3)
    data = ImageArrays(data.x, data.y, data.classes)
    data.x[:, 0, 0, 0] = np.arange(200) % 256  # tag images to track them
    tr1, va1 = carve_validation(data, 50, seed=0)
    tr2, va2 = carve_validation(data, 50, seed=0)
    tr3, va3 = carve_validation(data, 50, seed=1)
    assert va1 is not None and va2 is not None and va3 is not None
    assert len(tr1) == 150 and len(va1) == 50
    np.testing.assert_array_equal(va1.x, va2.x)
    assert not np.array_equal(va1.x, va3.x)
    assert np.bincount(va1.y, minlength=10).tolist() == [5] * 10
    ids_train, ids_val = set(tr1.x[:, 0, 0, 0].tolist()), set(va1.x[:, 0, 0, 0].tolist())
    assert not ids_train & ids_val and len(ids_train | ids_val) == 200
    with pytest.raises(LakdError, match="val_size"):
        carve_validation(data, 200, seed=0)


def test_crop_flip_by_hand() -> None:
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    # Offsets (0, 0) with padding 1 shift the image down-right by one, zero-filled.
    out = apply_crop_flip(img, 1, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))
    expected = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]], dtype=torch.uint8)
    assert torch.equal(out[0, 0], expected)
    # Centre offset is the identity; flip mirrors the columns.
    out = apply_crop_flip(img, 1, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]))
    assert torch.equal(out[0, 0], img[0, 0].flip(1))


def test_random_crop_flip_per_image_and_seeded() -> None:
    batch = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(batch, 2, True, torch.Generator().manual_seed(0))
    b = random_crop_flip(batch, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == batch.shape
    changed = (a != batch).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64 or int(changed.sum()) == 64  # most images move


def test_normalise_by_hand() -> None:
    x = torch.tensor([[[[0]], [[255]], [[51]]]], dtype=torch.uint8)
    out = normalise(x, torch.tensor([0.5, 0.5, 0.2]), torch.tensor([0.5, 0.25, 0.1]))
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 2.0, 0.0]))


def test_loader_epochs_shards_and_resume() -> None:
    data = make_synthetic(100, 10, seed=0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    loader = BatchLoader(data, Batching(16, mean, std, shuffle=True, augment=True, drop_last=True, seed=1))
    assert len(loader) == 6
    loader.set_epoch(0)
    e0 = list(loader)
    loader.set_epoch(1)
    e1 = list(loader)
    loader.set_epoch(0)
    e0_again = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e0, e0_again, strict=True))
    assert not torch.equal(e0[0][1], e1[0][1])
    # Mid-epoch resume yields exactly the remaining batches, augmentation included.
    tail = list(loader.iter_from(4))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(tail, e0[4:], strict=True))
    # Two ranks with batch 10 see, step by step, exactly one process's batches of 20, augmentation included:
    # rank r holds every second sample from r on.
    single = list(BatchLoader(data, Batching(20, mean, std, shuffle=True, augment=True, drop_last=True, seed=1)))
    ranks = [list(BatchLoader(data, Batching(10, mean, std, shuffle=True, augment=True, drop_last=True, seed=1, rank=r,
                              world_size=2))) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for step, (x, y) in enumerate(single):
        for r in (0, 1):
            assert torch.equal(ranks[r][step][0], x[r::2]) and torch.equal(ranks[r][step][1], y[r::2])
    with pytest.raises(ValueError, match="drop_last"):
        BatchLoader(data, Batching(10, mean, std, rank=0, world_size=2))


def test_synthetic_splits_are_learnable_shapes() -> None:
    splits = load_splits("synthetic", val_size=32, synthetic_size=128)
    assert len(splits.train) == 96 and splits.val is not None and len(splits.val) == 32
    assert splits.num_classes == 10 and splits.image_size == 32
    with pytest.raises(LakdError, match="did you mean 'cifar10'"):
        load_splits("cifar1O")


@pytest.mark.realdata
def test_real_cifar10_smoke(shared_data: Path) -> None:
    splits = load_splits("cifar10", shared_data, val_size=5000, test_limit=300)
    assert len(splits.train) == 45000 and splits.val is not None and len(splits.val) == 300
    assert len(splits.test) == 300 and splits.num_classes == 10
    assert splits.train.classes[0] == "airplane"
    mean = splits.train.x.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, [125.3, 122.9, 113.9], atol=3.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("y", np.array([0, 1, 5, 1], dtype=np.int64), "label 5 is out of range for 2 classes"),
    ("y", np.array([0, -1, 1, 1], dtype=np.int64), "label -1 is out of range"),
    ("offsets", "reversed", "offsets are not increasing"),
])
def test_npz_labels_and_offsets_are_checked_at_load(tmp_path: Path, field: str, value: object, message: str) -> None:
    """Out-of-range labels are refused when the file is read, not as an IndexError traceback mid-training."""
    root, parts = _tiny_npz_root(tmp_path)
    if isinstance(value, str):
        parts["offsets"] = parts["offsets"].copy()
        parts["offsets"][1], parts["offsets"][2] = parts["offsets"][2], parts["offsets"][1]
    else:
        parts[field] = value
    np.savez(root / "cifar10" / "train.npz", **parts)
    with pytest.raises(LakdError, match=message):
        load_cifar("cifar10", root, "train")


def test_datasets_register_with_their_capabilities() -> None:
    from lakd.data.datasets import DATASET_REGISTRY, DATASETS, register_dataset

    assert set(DATASETS) == {"cifar10", "cifar100", "imagefolder", "imagenet", "synthetic"}
    assert DATASET_REGISTRY["imagenet"].streams == "always" and DATASET_REGISTRY["imagefolder"].streams == "optional"
    assert not DATASET_REGISTRY["cifar10"].takes_image_size
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("cifar10")(lambda request: None)
    with pytest.raises(LakdError, match="data.stream applies to dataset 'imagefolder' only"):
        load_splits("synthetic", stream=True)


def test_ctrl_c_while_decoding_leaves_no_cache_no_run_and_no_traceback(npz_root: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image as PILImage

    from lakd.cli import main

    opened = {"n": 0}
    real_open = PILImage.open

    def open_then_interrupt(*args: object, **kwargs: object) -> object:
        opened["n"] += 1
        if opened["n"] == 30:  # halfway through the training images
            raise KeyboardInterrupt
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PILImage, "open", open_then_interrupt)
    out = tmp_path / "run"
    rc = main(["train", "--model", "resnet8", "--dataset", "cifar10", "--data-root", str(npz_root), "--epochs", "1",
               "--out", str(out), "--no-progress", "data.val_size=10"])
    err = capsys.readouterr().err
    assert rc == 130 and opened["n"] == 30
    assert err.strip().splitlines() == [err.strip()] and "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    cache = decoded_cache_dir(npz_root)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_file()]  # no torn cache, no temp file


def test_a_full_disk_for_the_decode_cache_is_a_note_not_a_failure(npz_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import lakd.atomic

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lakd.atomic.os, "fsync", full)
    arrays = load_cifar("cifar10", npz_root, "train")
    assert arrays.x.shape == (60, 32, 32, 3)
    err = capsys.readouterr().err
    assert "could not write the decode cache" in err and "No space left on device" in err
    cache = decoded_cache_dir(npz_root)
    assert not cache.exists() or not list(cache.iterdir())  # no torn cache, no temp file


def test_augmentation_follows_the_image_size_and_replays_exactly() -> None:
    """data.augmentation=auto: pad-crop for small images, random-resized-crop for larger ones (torchvision's
    RandomResizedCrop draw); either way an epoch's batches are the same when replayed from a step."""
    from lakd.data.augment import apply_resized_crop_flip, draw_resized_crop_flip
    from lakd.data.batches import augmentation_for

    assert augmentation_for(32) == "pad_crop" and augmentation_for(64) == "pad_crop"
    assert augmentation_for(96) == "resized_crop"
    g = torch.Generator().manual_seed(0)
    top, left, h, w, flip = draw_resized_crop_flip(2000, 96, 80, g)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 96) & (left + w <= 80) & (h > 0) & (w > 0)).all())
    share = (h * w).float() / (96 * 80)
    assert 0.07 <= float(share.min()) and float(share.max()) <= 1.0 and 0.4 < float(flip.float().mean()) < 0.6
    aspect = (w.float() / h.float())[share < 0.99]
    assert float(aspect.min()) > 0.7 and float(aspect.max()) < 1.4
    # a crop of the whole image, unflipped, is the image (bilinear resize to its own size)
    image = torch.randint(0, 256, (1, 3, 12, 10), dtype=torch.uint8)
    same = apply_resized_crop_flip(image, torch.tensor([0]), torch.tensor([0]), torch.tensor([12]), torch.tensor([10]),
                                   torch.tensor([False]))
    assert torch.allclose(same, image.float())
    data = make_synthetic(40, 4, image_size=96)
    stats = ((0.5,) * 3, (0.25,) * 3)
    loader = BatchLoader(data, Batching(8, *stats, shuffle=True, augment=True, drop_last=True, seed=2,
                                        augmentation="resized_crop"))
    loader.set_epoch(1)
    whole = list(loader)
    assert len(whole) == 5 and whole[0][0].shape == (8, 3, 96, 96)
    tail = list(loader.iter_from(3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[3:], tail, strict=True))
    plain = next(iter(BatchLoader(data, Batching(8, *stats, shuffle=True, seed=2))))[0]
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], plain)
