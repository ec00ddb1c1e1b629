"""Datasets by name -> train / val / test arrays plus the normalisation to use with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lakd.data.cifar import CIFAR_NAMES, ImageArrays, load_cifar
from lakd.data.root import resolve_data_root
from lakd.data.synthetic import make_synthetic
from lakd.errors import LakdError, did_you_mean

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")

# Channel statistics of the training sets (published CIFAR values, which the shared JPEG copies match).
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class DatasetSplits:
    """What the trainer needs: uint8 arrays for each split, class names, and mean/std for normalising."""

    name: str
    train: ImageArrays
    val: ImageArrays | None
    test: ImageArrays
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[1])


def carve_validation(train: ImageArrays, val_size: int, seed: int) -> tuple[ImageArrays, ImageArrays | None]:
    """Hold out ``val_size`` training images, chosen by a fixed seed (stratified by class), as validation.

    Stratifying keeps every class equally represented in the held-out set; the seed makes the split identical
    across runs and machines, so model selection on it is reproducible.
    """
    if val_size <= 0:
        return train, None
    n = len(train)
    if val_size >= n:
        raise LakdError(f"data.val_size={val_size} must be smaller than the training set ({n} images)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    # Round-robin over classes in a random order gives a stratified pick of exactly val_size images.
    by_class = [order[train.y[order] == c] for c in np.unique(train.y)]
    picked: list[int] = []
    depth = 0
    while len(picked) < val_size:
        for members in by_class:
            if depth < len(members) and len(picked) < val_size:
                picked.append(int(members[depth]))
        depth += 1
    val_index = np.sort(np.array(picked))
    keep = np.ones(n, dtype=bool)
    keep[val_index] = False
    return train.subset(np.flatnonzero(keep)), train.subset(val_index)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, computed on (a sample of) uint8 HWC images."""
    sample = x[: min(len(x), 10000)].reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return tuple(sample.mean(0).tolist()), tuple(sample.std(0).tolist())


def load_splits(
    name: str,
    root: str | Path | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
    path: str | Path | None = None,
    synthetic_size: int = 512,
    synthetic_classes: int = 10,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` and carve the validation split.

    ``imagefolder`` reads ``path/train`` and ``path/test`` (or ``path/val`` as the test split).
    ``train_limit`` / ``test_limit`` keep a fixed stratified-random subset (quick runs, smoke tests);
    they are applied after the validation split so validation is unchanged by them.
    """
    if name not in DATASETS:
        raise LakdError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}")
    if name in CIFAR_NAMES:
        data_root, how = resolve_data_root(root)
        try:
            train, test = load_cifar(name, data_root, "train"), load_cifar(name, data_root, "test")
        except LakdError as exc:
            raise LakdError(f"{exc} (data root chosen by {how})") from None
        mean, std = NORMALISATION[name]
    elif name == "synthetic":
        train = make_synthetic(synthetic_size, synthetic_classes, seed=split_seed)
        test = _synthetic_test(synthetic_size, synthetic_classes, split_seed)
        mean, std = channel_stats(train.x)
    else:
        if not path:
            raise LakdError("dataset 'imagefolder' needs data.path: a folder with train/ and test/ (or val/) "
                            "class subfolders")
        from lakd.data.folder import read_image_folder

        base = Path(path).expanduser()
        test_dir = base / "test" if (base / "test").is_dir() else base / "val"
        for d in (base / "train", test_dir):
            if not d.is_dir():
                raise LakdError(f"imagefolder: '{d}' is not a folder; expected {base}/train/<class>/... and "
                                f"{base}/test/<class>/... (or val/)")
        x, y, classes = read_image_folder(base / "train")
        train = ImageArrays(x, y, classes)
        x, y, test_classes = read_image_folder(test_dir)
        if test_classes != classes:
            raise LakdError(f"imagefolder: class folders of {test_dir} differ from those of {base / 'train'}")
        test = ImageArrays(x, y, classes)
        mean, std = channel_stats(train.x)
    train, val = carve_validation(train, val_size, split_seed)
    if train_limit:
        train = _limit(train, train_limit, split_seed)
    if test_limit:
        test = _limit(test, test_limit, split_seed)
        if val is not None:
            val = _limit(val, test_limit, split_seed)
    return DatasetSplits(name, train, val, test, tuple(mean), tuple(std))  # type: ignore[arg-type]


def _limit(arrays: ImageArrays, limit: int, seed: int) -> ImageArrays:
    if limit >= len(arrays):
        return arrays
    index = np.sort(np.random.default_rng(seed + 7).permutation(len(arrays))[:limit])
    return arrays.subset(index)


def _synthetic_test(train_size: int, num_classes: int, seed: int) -> ImageArrays:
    """Fresh images from the same class patterns as the synthetic train set (same seed, new noise)."""
    full = make_synthetic(train_size + max(train_size // 4, num_classes), num_classes, seed=seed)
    return full.subset(np.arange(train_size, len(full)))
