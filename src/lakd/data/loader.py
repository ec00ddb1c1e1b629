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

from lakd.data.augment import normalise
from lakd.data.batches import Batching, EpochBatches
from lakd.data.cifar import ImageArrays

if TYPE_CHECKING:
    from lakd.data.objects import DatasetLoader, DatasetSplit
    from lakd.data.stream import FileList, StreamLoader




class BatchLoader(EpochBatches):
    """Yield ``(images float32 (B, C, H, W), labels int64 (B,)[, index int64 (B,)])`` from uint8 arrays."""

    def __init__(self, arrays: ImageArrays, batching: Batching) -> None:
        super().__init__(torch.from_numpy(arrays.y.astype(np.int64)), batching)
        # HWC uint8 -> CHW view; kept as one tensor so batch gathers are a single index_select.
        self.images = torch.from_numpy(np.ascontiguousarray(arrays.x)).permute(0, 3, 1, 2)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of the current epoch starting at ``start_step`` (mid-epoch resume); see ``_planned_steps``."""
        for index, params in self._planned_steps(start_step):
            images = self._augmented(self.images[index], params)
            batch = normalise(images, self.mean, self.std)
            labels = self.labels[index]
            if self.pin_memory:
                batch, labels = batch.pin_memory(), labels.pin_memory()
            yield (batch, labels, index) if self.return_index else (batch, labels)


def make_loader(data: ImageArrays | FileList | DatasetSplit, batching: Batching
                ) -> BatchLoader | StreamLoader | DatasetLoader:
    """The loader for a split: in-memory arrays -> ``BatchLoader``, a file list -> ``StreamLoader``, a user's
    dataset -> ``DatasetLoader``.

    The one place that knows there are three kinds of split, so the trainer and ``evaluate`` never branch on the
    dataset.
    """
    from lakd.data.objects import DatasetLoader, DatasetSplit

    if isinstance(data, DatasetSplit):
        return DatasetLoader(data, batching)
    if isinstance(data, ImageArrays):
        return BatchLoader(data, batching)
    from lakd.data.stream import StreamLoader

    return StreamLoader(data, batching)
