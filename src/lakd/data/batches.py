"""What every loader shares: the epoch's order, its length and the DDP sharding rules.

The in-memory ``BatchLoader`` (loader.py) and the streaming ``StreamLoader`` (stream.py) both derive from
``EpochBatches``, so they cannot drift apart; neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

AUGMENTATIONS = ("pad_crop", "resized_crop")


def augmentation_for(image_size: int) -> str:
    """``data.augmentation: auto``: CIFAR's pad-and-crop for small images (up to 64 px), random-resized-crop for
    larger ones, as torchvision's reference recipes do; both with horizontal flips."""
    return "pad_crop" if image_size <= 64 else "resized_crop"


@dataclass(frozen=True)
class Batching:
    """How a split is batched: the one description every loader (in-memory, streamed, a user's dataset) and
    ``make_loader`` take, so the settings are written once, by the trainer or ``evaluate``.

    ``crop_padding`` applies to the batch-level pad-crop of arrays and datasets; ``workers`` is decode threads for
    streamed files, worker processes for a user's dataset; ``return_index`` also yields each sample's index in the
    split (CRD's memory bank); ``pin_memory`` page-locks batches so the host->GPU copy can overlap compute.
    """

    batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shuffle: bool = False
    augment: bool = False
    crop_padding: int = 4
    drop_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    return_index: bool = False
    pin_memory: bool = False
    workers: int | None = None
    augmentation: str = "pad_crop"  # with augment: pad_crop (CIFAR: pad, crop, flip) | resized_crop (ImageNet-style)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size > 1 and not self.drop_last:
            raise ValueError("a sharded loader (world_size > 1) needs drop_last=True so every rank runs the same steps")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


class EpochBatches:
    """What every loader shares: the epoch's sample order, the step count and the DDP sharding rule.

    Subclasses call ``__init__`` with the split's labels and its :class:`Batching`, and define ``num_images``
    and ``iter_from``.
    """

    def __init__(self, labels: torch.Tensor, batching: Batching) -> None:
        self.labels = labels
        self.batching = batching
        self.batch_size = batching.batch_size
        self.mean = torch.tensor(batching.mean, dtype=torch.float32)
        self.std = torch.tensor(batching.std, dtype=torch.float32)
        self.shuffle = batching.shuffle
        self.augment = batching.augment
        self.crop_padding = batching.crop_padding
        self.drop_last = batching.drop_last
        self.seed = batching.seed
        self.rank = batching.rank
        self.world_size = batching.world_size
        self.epoch = 0
        self.return_index = batching.return_index
        self.pin_memory = batching.pin_memory

    @property
    def num_images(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        """This epoch's sample order; every rank draws the same one."""
        n = self.num_images
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return torch.randperm(n, generator=g)
        return torch.arange(n)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, gb = self.num_images, self.global_batch_size
        return n // gb if self.drop_last else -(-n // gb)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.iter_from(0)

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of the split's images, for augmentations drawn per image."""
        raise NotImplementedError

    def _augmented(self, images: torch.Tensor, params: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """``images`` with this step's drawn augmentation applied (or as they are)."""
        from lakd.data.augment import apply_crop_flip, apply_resized_crop_flip

        if params is None:
            return images
        if self.batching.augmentation == "resized_crop":
            return apply_resized_crop_flip(images, *params)
        return apply_crop_flip(images, self.crop_padding, *params)

    def _planned_steps(self, start_step: int) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]]:
        """``(this rank's sample indices, its crop/flip draws or None)`` for each step of the epoch from
        ``start_step`` on: the batch-level augmentation of the in-memory loaders (CIFAR's pad-crop and flip).

        Every step's augmentation is drawn, even a skipped one, so resumed steps match exactly. With
        ``world_size`` N, step s covers the same ``batch_size * N`` samples, with the same augmentation, as step s
        of a single process with an N-times larger batch; rank r takes every N-th of them from r on.
        """
        from lakd.data.augment import draw_crop_flip, draw_resized_crop_flip

        order = self._order()
        aug_gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 31 + 17)
        gb = self.global_batch_size
        for step in range(len(self)):
            index = order[step * gb:(step + 1) * gb]
            params: tuple[torch.Tensor, ...] | None = None
            if self.augment and self.batching.augmentation == "resized_crop":
                params = draw_resized_crop_flip(len(index), *self.image_hw, aug_gen)
            elif self.augment:
                params = draw_crop_flip(len(index), self.crop_padding, True, aug_gen)
            if step < start_step:
                continue
            if self.world_size > 1:
                mine = slice(self.rank, None, self.world_size)
                index = index[mine]
                params = tuple(p[mine] for p in params) if params is not None else None
            yield index, params
