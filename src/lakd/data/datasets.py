"""Datasets by name -> train / val / test splits plus the normalisation to use with them.

A split is either decoded uint8 arrays in RAM (``ImageArrays``: CIFAR, synthetic, small image folders) or a list
of files decoded while training (``FileList``: ``imagenet``, and ``imagefolder`` with ``data.stream: true``).
Both offer ``len``, ``.y``, ``.classes``, ``.image_size`` and ``subset``, so validation carving, limits and the
loader factory (``lakd.data.make_loader``) treat them alike. Every dataset is one loader registered with
``@register_dataset`` (its streaming and image-size capabilities beside it): a new dataset is one function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lakd.data.cifar import ImageArrays, load_cifar
from lakd.data.folder import ImageFolderError
from lakd.data.root import resolve_data_root
from lakd.data.stream import (
    DEFAULT_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileList,
    sample_channel_stats,
    scan_file_list,
)
from lakd.data.synthetic import make_synthetic
from lakd.errors import LakdError, did_you_mean

Split = ImageArrays | FileList


@dataclass(frozen=True)
class DatasetRequest:
    """What a dataset loader gets from the config (``data.*``)."""

    name: str
    root: str | Path | None
    path: str | Path | None
    split_seed: int
    synthetic_size: int
    synthetic_classes: int
    stream: bool
    image_size: int | None


#: ``loader(request) -> (train, test, mean, std)``
Loader = Callable[[DatasetRequest], tuple[Split, Split, tuple[float, ...], tuple[float, ...]]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Loader
    streams: str = "never"  # never | always | optional (data.stream picks)
    takes_image_size: bool = False  # data.image_size applies (crop side when streamed, resize when in memory)


DATASET_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, streams: str = "never", takes_image_size: bool = False
                     ) -> Callable[[Loader], Loader]:
    """Function decorator: make a loader available as ``data.dataset: <name>``, its capabilities beside it."""

    def wrap(loader: Loader) -> Loader:
        if name in DATASET_REGISTRY:
            raise ValueError(f"dataset '{name}' registered twice")
        DATASET_REGISTRY[name] = DatasetInfo(name, loader, streams, takes_image_size)
        return loader

    return wrap

# Channel statistics of the training sets (published CIFAR values, which the shared JPEG copies match).
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass
class DatasetSplits:
    """What the trainer needs: each split (arrays or a file list), class names, and mean/std for normalising."""

    name: str
    train: Split
    val: Split | None
    test: Split | None  # None only for a user's datasets given without a test set
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_size(self) -> int:
        """Side of the square images the model gets (a streamed split's crop size, else the arrays' size)."""
        return self.train.image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image as the models take it, (C, H, W)."""
        shape = getattr(self.train, "input_shape", None)
        return shape if shape is not None else (3, self.image_size, self.image_size)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, FileList)


def carve_validation(train: Split, val_size: int | float, seed: int) -> tuple[Split, Split | None]:
    """Hold out ``val_size`` training images (a count, or a fraction in (0, 1)), chosen by a fixed seed (stratified
    by class), as validation.

    Stratifying keeps every class equally represented in the held-out set; the seed makes the split identical
    across runs and machines, so model selection on it is reproducible. Arrays and file lists alike.
    """
    if val_size <= 0:
        return train, None
    n = len(train)
    if val_size < 1:  # a fraction of the training set
        val_size = max(1, round(n * val_size))
    val_size = int(val_size)
    if val_size * 2 > n:
        raise LakdError(f"data.val_size={val_size} would hold out half or more of the training set ({n} images) for "
                        "validation: give a fraction instead (data.val_size=0.1 holds out a tenth) or a smaller count")
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
    stream: bool = False,
    image_size: int | None = None,
) -> DatasetSplits:
    """Load dataset ``name`` and carve the validation split.

    ``imagefolder`` reads ``path/train`` and ``path/test`` (or ``path/val`` as the test split), into RAM, or as
    file lists when ``stream``. ``imagenet`` is always streamed, from ``path`` if given, else from
    ``<data root>/imagenet``, with ``val/`` (or ``test/``) as the test split. ``image_size`` is the side the
    streaming loader crops to (default 224); for an in-memory image folder it resizes every image.
    ``train_limit`` / ``test_limit`` keep a fixed stratified-random subset (quick runs, smoke tests);
    they are applied after the validation split so validation is unchanged by them.
    """
    info = DATASET_REGISTRY.get(name)
    if info is None:
        known = sorted(DATASET_REGISTRY)
        raise LakdError(f"unknown dataset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
    if stream and info.streams == "never":
        optional = [n for n, i in DATASET_REGISTRY.items() if i.streams == "optional"]
        always = [n for n, i in DATASET_REGISTRY.items() if i.streams == "always"]
        raise LakdError(f"data.stream applies to dataset {' / '.join(repr(n) for n in optional)} only "
                        f"({' / '.join(repr(n) for n in always)} always stream); '{name}' is loaded into memory — "
                        "drop data.stream")
    if image_size is not None and not info.takes_image_size:
        takes = [n for n, i in DATASET_REGISTRY.items() if i.takes_image_size]
        raise LakdError(f"data.image_size applies to {' and '.join(repr(n) for n in takes)}; '{name}' images keep "
                        "their own size — drop data.image_size")
    if image_size is not None and image_size < 1:
        raise LakdError(f"data.image_size must be >= 1, got {image_size}")
    request = DatasetRequest(name, root, path, split_seed, synthetic_size, synthetic_classes,
                             stream or info.streams == "always", image_size)
    train, test, mean, std = info.loader(request)
    return finish_splits(name, train, None, test, mean, std, val_size, split_seed, train_limit, test_limit)


def finish_splits(name: str, train: Split, val: Split | None, test: Split | None, mean: tuple[float, ...],
                  std: tuple[float, ...], val_size: int, split_seed: int, train_limit: int | None,
                  test_limit: int | None) -> DatasetSplits:
    """The splits of a run: validation carved from ``train`` (unless ``val`` is given), then the limits (after
    the carve, so validation is unchanged by them)."""
    if val is None:
        train, val = carve_validation(train, val_size, split_seed)
    if train_limit:
        train = _limit(train, train_limit, split_seed)
    if test_limit:
        test = _limit(test, test_limit, split_seed) if test is not None else None
        if val is not None:
            val = _limit(val, test_limit, split_seed)
    return DatasetSplits(name, train, val, test, tuple(mean), tuple(std))  # type: ignore[arg-type]


@register_dataset("cifar100")
@register_dataset("cifar10")  # (applied first: cifar10 is registered first)
def _load_cifar(request: DatasetRequest) -> tuple[Split, Split, tuple[float, ...], tuple[float, ...]]:
    """CIFAR-10/100 in whichever form is under the data root (npz of JPEGs, python pickles, image folders)."""
    data_root, how = resolve_data_root(request.root)
    try:
        train, test = load_cifar(request.name, data_root, "train"), load_cifar(request.name, data_root, "test")
    except LakdError as exc:
        raise LakdError(f"{exc} (data root chosen by {how})") from None
    mean, std = NORMALISATION[request.name]
    return train, test, mean, std


@register_dataset("synthetic")
def _load_synthetic(request: DatasetRequest) -> tuple[Split, Split, tuple[float, ...], tuple[float, ...]]:
    """Random class patterns plus noise: every step of the system runs without data (tests, smoke runs)."""
    train = make_synthetic(request.synthetic_size, request.synthetic_classes, seed=request.split_seed)
    test = _synthetic_test(request.synthetic_size, request.synthetic_classes, request.split_seed)
    return (train, test, *channel_stats(train.x))


@register_dataset("imagefolder", streams="optional", takes_image_size=True)
def _load_imagefolder(request: DatasetRequest) -> tuple[Split, Split, tuple[float, ...], tuple[float, ...]]:
    """``path/train`` and ``path/test`` (or ``path/val``), one folder per class: in RAM, or streamed."""
    if request.stream:
        train, test = _file_lists(request.name, request.root, request.path,
                                  request.image_size or DEFAULT_IMAGE_SIZE)
        return (train, test, *sample_channel_stats(train))
    if not request.path:
        raise LakdError("dataset 'imagefolder' needs data.path: a folder with train/ and test/ (or val/) "
                        "class subfolders")
    from lakd.data.folder import read_image_folder

    base = Path(request.path).expanduser()
    test_dir = base / "test" if (base / "test").is_dir() else base / "val"
    for d in (base / "train", test_dir):
        if not d.is_dir():
            raise LakdError(f"imagefolder: '{d}' is not a folder; expected {base}/train/<class>/... and "
                            f"{base}/test/<class>/... (or val/)")
    x, y, classes = read_image_folder(base / "train", request.image_size)
    train = ImageArrays(x, y, classes)
    x, y, test_classes = read_image_folder(test_dir, request.image_size)
    if test_classes != classes:
        raise LakdError(f"imagefolder: class folders of {test_dir} differ from those of {base / 'train'}")
    return (train, ImageArrays(x, y, classes), *channel_stats(train.x))


@register_dataset("imagenet", streams="always", takes_image_size=True)
def _load_imagenet(request: DatasetRequest) -> tuple[Split, Split, tuple[float, ...], tuple[float, ...]]:
    """ImageNet-1k as class folders, always streamed (never decoded into RAM); the published channel stats."""
    train, test = _file_lists(request.name, request.root, request.path, request.image_size or DEFAULT_IMAGE_SIZE)
    mean, std = NORMALISATION["imagenet"]
    return train, test, mean, std


DATASETS = tuple(DATASET_REGISTRY)  # the registered names, in registration order


def _file_lists(
    name: str, root: str | Path | None, path: str | Path | None, image_size: int
) -> tuple[FileList, FileList]:
    """Scan the train and test folders of a streamed dataset; say where we looked and what layout is expected."""
    if path:
        base, how = Path(path).expanduser(), "data.path"
    elif name == "imagefolder":
        raise LakdError("dataset 'imagefolder' needs data.path: a folder with train/ and test/ (or val/) "
                        "class subfolders")
    else:
        data_root, how = resolve_data_root(root)
        base, how = data_root / name, f"data root chosen by {how}"
    # ImageNet calls its labelled held-out split "val"; a generic folder more often "test".
    names = ("val", "test") if name == "imagenet" else ("test", "val")
    test_dir = next((base / n for n in names if (base / n).is_dir()), base / names[0])
    layout = (f"{base}/train/<class>/*.JPEG and {base}/{names[0]}/<class>/*.JPEG (or {names[1]}/), one folder per "
              "class with the same class folders in both")
    for d in (base / "train", test_dir):
        if not d.is_dir():
            hint = (" — point data.path at the folder holding train/ and val/, or --data-root / $LAKD_DATA at "
                    "the folder holding imagenet/" if name == "imagenet" else "")
            raise LakdError(f"{name}: no folder '{d}' ({how}); expected {layout}{hint}")
    train = scan_file_list(base / "train", image_size)
    try:
        test = scan_file_list(test_dir, image_size)
    except ImageFolderError as exc:
        if name != "imagenet":
            raise
        raise LakdError(f"{exc}. ImageNet's val images ship as one flat folder: sort them into one folder per "
                        "class (the same names as train/) first") from None
    if test.classes != train.classes:
        only_train = sorted(set(train.classes) - set(test.classes))[:5]
        only_test = sorted(set(test.classes) - set(train.classes))[:5]
        raise LakdError(f"{name}: the class folders of '{test_dir}' ({len(test.classes)}) differ from those of "
                        f"'{base / 'train'}' ({len(train.classes)}); only in train: {only_train or 'none'}, only "
                        f"in {test_dir.name}: {only_test or 'none'} (first 5 shown). Both need the same class folders")
    return train, test


def as_arrays(split: Split) -> ImageArrays:
    """A split as uint8 arrays: itself, or a file list decoded with the evaluation transform (keep it small)."""
    return split if isinstance(split, ImageArrays) else split.to_arrays()


def _limit(arrays: Split, limit: int, seed: int) -> Split:
    if limit >= len(arrays):
        return arrays
    index = np.sort(np.random.default_rng(seed + 7).permutation(len(arrays))[:limit])
    return arrays.subset(index)


def _synthetic_test(train_size: int, num_classes: int, seed: int) -> ImageArrays:
    """Fresh images from the same class patterns as the synthetic train set (same seed, new noise)."""
    full = make_synthetic(train_size + max(train_size // 4, num_classes), num_classes, seed=seed)
    return full.subset(np.arange(train_size, len(full)))
