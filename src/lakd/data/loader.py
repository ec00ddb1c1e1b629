"""Batch iterators. ``BatchLoader``: the whole split sits in RAM as uint8; each epoch is one permutation.

Order and augmentation are drawn from a generator seeded by ``(seed, epoch)``, so an epoch's batches are the
same whenever it is replayed (resume) and each DDP rank takes its own shard of the same permutation.
``EpochBatches`` holds what every loader shares (order, length, sharding rules), so the streaming loader
(``lakd.data.stream.StreamLoader``) cannot drift from the in-memory one; ``make_loader`` picks between them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from lakd.data.augment import apply_crop_flip, normalise
from lakd.data.batches import EpochBatches
from lakd.data.cifar import ImageArrays

if TYPE_CHECKING:
    from lakd.data.objects import DatasetLoader, DatasetSplit
    from lakd.data.stream import FileList, StreamLoader




class BatchLoader(EpochBatches):
    """Yield ``(images float32 (B, C, H, W), labels int64 (B,)[, index int64 (B,)])`` from uint8 arrays."""

    def __init__(
        self,
        arrays: ImageArrays,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = False,
        augment: bool = False,
        crop_padding: int = 4,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        return_index: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(torch.from_numpy(arrays.y.astype(np.int64)), batch_size, mean, std, shuffle, augment,
                         drop_last, seed, rank, world_size, return_index, pin_memory)
        # HWC uint8 -> CHW view; kept as one tensor so batch gathers are a single index_select.
        self.images = torch.from_numpy(np.ascontiguousarray(arrays.x)).permute(0, 3, 1, 2)
        self.crop_padding = crop_padding

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of the current epoch starting at ``start_step`` (mid-epoch resume); see ``_planned_steps``."""
        for index, params in self._planned_steps(start_step, self.crop_padding):
            images = self.images[index]
            if params is not None:
                images = apply_crop_flip(images, self.crop_padding, *params)
            batch = normalise(images, self.mean, self.std)
            labels = self.labels[index]
            if self.pin_memory:
                batch, labels = batch.pin_memory(), labels.pin_memory()
            yield (batch, labels, index) if self.return_index else (batch, labels)


def make_loader(
    data: ImageArrays | FileList | DatasetSplit,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    shuffle: bool = False,
    augment: bool = False,
    crop_padding: int = 4,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    return_index: bool = False,
    pin_memory: bool = False,
    workers: int | None = None,
) -> BatchLoader | StreamLoader | DatasetLoader:
    """The loader for a split: in-memory arrays -> ``BatchLoader``, a file list -> ``StreamLoader``.

    The one place that knows there are three kinds of split (arrays, files, a user's ``Dataset``), so the trainer
    and ``evaluate`` never branch on the dataset. ``crop_padding`` applies to arrays and datasets (pad-crop);
    ``workers``: decode threads for files, worker processes for a dataset.
    """
    from lakd.data.objects import DatasetLoader, DatasetSplit

    if isinstance(data, DatasetSplit):
        return DatasetLoader(data, batch_size, mean, std, shuffle=shuffle, augment=augment,
                             crop_padding=crop_padding, drop_last=drop_last, seed=seed, rank=rank,
                             world_size=world_size, return_index=return_index, pin_memory=pin_memory,
                             workers=workers)
    if isinstance(data, ImageArrays):
        return BatchLoader(data, batch_size, mean, std, shuffle=shuffle, augment=augment, crop_padding=crop_padding,
                           drop_last=drop_last, seed=seed, rank=rank, world_size=world_size,
                           return_index=return_index, pin_memory=pin_memory)
    from lakd.data.stream import StreamLoader

    return StreamLoader(data, batch_size, mean, std, shuffle=shuffle, augment=augment, drop_last=drop_last, seed=seed,
                        rank=rank, world_size=world_size, return_index=return_index, pin_memory=pin_memory,
                        workers=workers)
