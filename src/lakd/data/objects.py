"""A user's own ``torch.utils.data.Dataset`` as a lakd split: any map-style dataset yielding ``(image, label)``.

The images are the user's: their transforms (augmentation included) run as they wrote them, and lakd only
batches what ``dataset[i]`` returns. Two kinds of image are accepted, fixed by the first one:

* **float tensors** ``(3, H, W)`` (e.g. after ``ToTensor()`` / ``Normalize``): passed to the model as they are;
  normalising them is the user's transform's job;
* **8-bit images**: PIL images (converted to RGB), ``uint8`` arrays ``(H, W, 3)`` or tensors ``(3, H, W)``:
  scaled and normalised by lakd with the run's mean/std, like its own datasets.

Every sample is fetched under a random seed of its own, derived from ``(seed, epoch, sample)``, with the global
random state put back afterwards: a user's random transforms give the same images whichever worker fetches the
sample, and a run resumed mid-epoch sees exactly the images an uninterrupted one would.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lakd.data.augment import normalise
from lakd.data.batches import Batching, EpochBatches
from lakd.errors import LakdError, short_repr

FLOAT, UINT8 = "float", "uint8"  # the two kinds of image a split can hold
MAX_SCAN_NOTE = 2000  # label scans longer than this say so (they run every sample's transform once)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def image_tensor(image: Any, where: str) -> tuple[torch.Tensor, str]:
    """``(image as a (3, H, W) tensor, its kind)``: float as given, 8-bit as uint8; anything else a LakdError."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), UINT8
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), UINT8
        image = torch.from_numpy(np.ascontiguousarray(image))
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        if image.dtype == torch.uint8:
            return image, UINT8
        if image.is_floating_point():
            return image.float(), FLOAT
    hint = ("lakd's models take 3-channel images: convert them to RGB in your transform (PIL's .convert('RGB') or "
            "transforms.Grayscale(num_output_channels=3))" if isinstance(image, torch.Tensor | np.ndarray)
            and image.ndim in (2, 3) else "return a PIL image, a (3, H, W) tensor or an (H, W, 3) uint8 array")
    raise LakdError(f"{where} returned {_describe(image)} as its image: {hint}")


def label_int(label: Any, where: str) -> int:
    """A class index from a label (int, NumPy integer, one-element integer tensor); else a LakdError."""
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point() \
            and label.dtype != torch.bool:
        return int(label.item())
    if isinstance(label, int | np.integer) and not isinstance(label, bool):
        return int(label)
    raise LakdError(f"{where} returned {short_repr(label)} ({type(label).__name__}) as its label: a label must be a "
                    "class index (an integer from 0 to the number of classes - 1)")


def _item(dataset: Any, index: int, role: str) -> tuple[Any, Any]:
    try:
        item = dataset[index]
    except LakdError:
        raise
    except Exception as exc:  # the user's dataset failed: say where, keep their message
        raise LakdError(f"the {role} dataset failed on item {index}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise LakdError(f"the {role} dataset's item {index} is {_describe(item)}, not an (image, label) pair")
    return item[0], item[1]


def dataset_labels(dataset: Any, role: str, log: Any = None) -> np.ndarray:
    """Every sample's label: from ``dataset.targets`` (torchvision's datasets) when it is trustworthy, else read
    item by item (running the dataset's transforms once per sample)."""
    n = len(dataset)
    targets = getattr(dataset, "targets", None)
    if targets is not None and getattr(dataset, "target_transform", None) is None and len(targets) == n:
        where = f"the {role} dataset's .targets"
        return np.array([label_int(t, where) for t in targets], dtype=np.int64)
    if log is not None and n > MAX_SCAN_NOTE:
        log(f"note: the {role} dataset has no .targets: reading its {n} labels item by item (give it a .targets "
            "list of labels to skip this)")
    return np.array([label_int(_item(dataset, i, role)[1], f"the {role} dataset's item {i}") for i in range(n)],
                    dtype=np.int64)


class DatasetSplit:
    """A map-style dataset (or a subset of its indices) with its labels: ``len``, ``y``, ``classes``,
    ``image_size``, ``input_shape`` and ``subset`` like lakd's own splits, so validation carving, limits and the
    loader factory treat it alike."""

    def __init__(self, dataset: Any, labels: np.ndarray, classes: Sequence[str], role: str,
                 index: np.ndarray | None = None, sample: tuple[torch.Tensor, str] | None = None) -> None:
        self.dataset = dataset
        self.index = np.arange(len(dataset)) if index is None else np.asarray(index)
        self.y = labels
        self.classes = list(classes)
        self.role = role
        if sample is None:
            if len(self.index) == 0:
                raise LakdError(f"the {role} dataset is empty")
            image, _ = _item(dataset, int(self.index[0]), role)
            sample = image_tensor(image, f"the {role} dataset's item {int(self.index[0])}")
        self.sample_shape = tuple(sample[0].shape)
        self.kind = sample[1]

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, index: np.ndarray) -> DatasetSplit:
        return DatasetSplit(self.dataset, self.y[index], self.classes, self.role, self.index[index],
                            (torch.empty(self.sample_shape), self.kind))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.sample_shape  # type: ignore[return-value]

    @property
    def image_size(self) -> int:
        """Side of the images (their height, when they are not square)."""
        return int(self.sample_shape[1])

    def fetch(self, position: int, salt: int) -> tuple[torch.Tensor, int]:
        """Sample ``position`` of this split as ``(image (3, H, W), label)``, its randomness seeded by ``salt``."""
        index = int(self.index[position])
        where = f"the {self.role} dataset's item {index}"
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(salt)
            np.random.seed(salt % 2**32)
            random.seed(salt)
            try:
                image, label = _item(self.dataset, index, self.role)
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
        tensor, kind = image_tensor(image, where)
        if kind != self.kind or tuple(tensor.shape) != self.sample_shape:
            raise LakdError(f"{where} is {_describe(tensor)} ({kind}), but the {self.role} dataset's first image "
                            f"is {self.kind} of shape {self.sample_shape}: every image must have the same kind and "
                            "size (resize or crop them to one size in your transform)")
        value = label_int(label, where)
        if value != int(self.y[position]):
            raise LakdError(f"{where} returned label {value}, but its recorded label (.targets) is "
                            f"{int(self.y[position])}: keep .targets consistent with what the dataset returns")
        return tensor, value


class _Fetch:
    """``torch.utils.data`` view of one epoch: item ``(position, salt)`` -> ``(image, label)``."""

    def __init__(self, split: DatasetSplit) -> None:
        self.split = split

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.split.fetch(*key)


def _stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


class DatasetLoader(EpochBatches):
    """``BatchLoader``'s interface over a :class:`DatasetSplit`: ``(x float32 (B, 3, H, W), y int64[, index])``.

    ``workers`` > 0 fetches in that many ``torch.utils.data`` worker processes; the images do not depend on it.
    lakd's own augmentation (pad-crop and flip, ``augment``) applies on top of the user's transforms only when
    asked for.
    """

    def __init__(self, split: DatasetSplit, batching: Batching) -> None:
        super().__init__(torch.from_numpy(split.y.astype(np.int64)), batching)
        self.split = split
        self.workers = batching.workers or 0

    @property
    def num_images(self) -> int:
        return len(self.split)

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.split.sample_shape[1]), int(self.split.sample_shape[2])

    def _salt(self, position: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 2_147_483_659 + int(self.split.index[position])) % 2**63

    def _batches(self, plan: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = [[(int(p), self._salt(int(p))) for p in index.tolist()] for index in plan]
        if self.workers == 0:
            for batch in keys:
                yield _stack([self.split.fetch(*key) for key in batch])
            return
        loader = torch.utils.data.DataLoader(_Fetch(self.split), batch_sampler=keys, num_workers=self.workers,
                                             collate_fn=_stack)
        yield from loader

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
        plan = list(self._planned_steps(start_step))
        for (index, params), (images, labels) in zip(plan, self._batches([i for i, _ in plan]), strict=True):
            images = self._augmented(images, params)
            batch = normalise(images, self.mean, self.std) if self.split.kind == UINT8 else images.float()
            if self.pin_memory:
                batch, labels = batch.pin_memory(), labels.pin_memory()
            yield (batch, labels, index) if self.return_index else (batch, labels)


def _class_names(dataset: Any, labels: list[np.ndarray]) -> list[str]:
    """The training dataset's ``.classes`` when it names every label, else ``'0'``, ``'1'``, ..."""
    count = max(int(y.max()) for y in labels if len(y)) + 1
    names = getattr(dataset, "classes", None)
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) >= count \
            and all(isinstance(n, str) for n in names):
        return list(names)
    return [str(i) for i in range(count)]


def _sample_stats(split: DatasetSplit, count: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean/std (0..1 units) of up to ``count`` training images (evenly spaced, fetched with seed 0)."""
    positions = np.linspace(0, len(split) - 1, num=min(count, len(split))).astype(int)
    images = torch.stack([split.fetch(int(p), 0)[0] for p in positions]).double() / 255.0
    return tuple(images.mean((0, 2, 3)).tolist()), tuple(images.std((0, 2, 3)).tolist())


def splits_from_datasets(
    train: Any, val: Any = None, test: Any = None, *, val_size: int = 0, split_seed: int = 0,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, train_limit: int | None = None,
    test_limit: int | None = None, log: Any = None,
) -> Any:
    """A run's ``DatasetSplits`` from a user's map-style datasets: validation is ``val``, else ``val_size`` training
    images carved out (stratified, seeded); ``mean``/``std`` normalise 8-bit images (default: the training images'
    own statistics); float images are taken as the user's transform made them."""
    from lakd.data.datasets import DatasetSplits, finish_splits

    given = {"train": train, "val": val, "test": test}
    for role, dataset in given.items():
        if dataset is None:
            continue
        if isinstance(dataset, torch.utils.data.IterableDataset | str | bytes | os.PathLike) \
                or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise LakdError(f"{role}: {type(dataset).__name__} is not a map-style dataset (one with __len__ and "
                            "__getitem__ returning (image, label)); wrap it, or name one of lakd's datasets")
    if val is not None and val_size:
        raise LakdError("give either val (a dataset) or val_size (images carved from train), not both")
    labels = {role: dataset_labels(d, role, log) for role, d in given.items() if d is not None}
    classes = _class_names(train, list(labels.values()))
    for role, y in labels.items():
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise LakdError(f"the {role} dataset has labels from {int(y.min())} to {int(y.max())}, but the training "
                            f"set's {len(classes)} classes take labels 0 to {len(classes) - 1}")
    splits = {role: DatasetSplit(d, labels[role], classes, role) for role, d in given.items() if d is not None}
    first = splits["train"]
    for role, split in splits.items():
        if (split.kind, split.sample_shape) != (first.kind, first.sample_shape):
            raise LakdError(f"the {role} dataset's images are {split.kind} of shape {split.sample_shape}, the training "
                            f"set's {first.kind} of shape {first.sample_shape}: give every split the same kind and "
                            "size of image (its evaluation transform may crop, but to the same size)")
    if first.kind == FLOAT:
        if mean is not None or std is not None:
            raise LakdError("mean/std normalise 8-bit images, but this dataset yields float tensors, which lakd "
                            "passes to the model as they are: normalise them in your transform instead")
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif (mean is None) != (std is None):
        raise LakdError("mean and std go together: give both (3 values each, 0..1 units) or neither")
    elif mean is None:
        mean, std = _sample_stats(first)
    name = f"python:{type(train).__name__}"
    result: DatasetSplits = finish_splits(name, first, splits.get("val"), splits.get("test"), tuple(mean),
                                          tuple(std), val_size, split_seed, train_limit, test_limit)
    return result
