"""What every loader shares: the epoch's order, its length and the DDP sharding rules.

The in-memory ``BatchLoader`` (loader.py) and the streaming ``StreamLoader`` (stream.py) both derive from
``EpochBatches``, so they cannot drift apart; neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class EpochBatches:
    """What every loader shares: the epoch's sample order, the step count and the DDP sharding rule.

    Subclasses call ``__init__`` with the settings every loader has and define ``num_images`` and ``iter_from``.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool,
        augment: bool,
        drop_last: bool,
        seed: int,
        rank: int,
        world_size: int,
        return_index: bool,
        pin_memory: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("a sharded loader (world_size > 1) needs drop_last=True so every rank runs the same steps")
        self.labels = labels
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.return_index = return_index  # also yield each sample's index in the split (CRD's memory bank)
        self.pin_memory = pin_memory  # page-locked batches: the host->GPU copy can overlap compute (CUDA only)

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

    def _planned_steps(
        self, start_step: int, crop_padding: int
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]]:
        """``(this rank's sample indices, its crop/flip draws or None)`` for each step of the epoch from
        ``start_step`` on: the batch-level augmentation of the in-memory loaders (CIFAR's pad-crop and flip).

        Every step's augmentation is drawn, even a skipped one, so resumed steps match exactly. With
        ``world_size`` N, step s covers the same ``batch_size * N`` samples, with the same augmentation, as step s
        of a single process with an N-times larger batch; rank r takes every N-th of them from r on.
        """
        from lakd.data.augment import draw_crop_flip

        order = self._order()
        aug_gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 31 + 17)
        gb = self.global_batch_size
        for step in range(len(self)):
            index = order[step * gb:(step + 1) * gb]
            params = draw_crop_flip(len(index), crop_padding, True, aug_gen) if self.augment else None
            if step < start_step:
                continue
            if self.world_size > 1:
                mine = slice(self.rank, None, self.world_size)
                index = index[mine]
                params = tuple(p[mine] for p in params) if params is not None else None
            yield index, params
