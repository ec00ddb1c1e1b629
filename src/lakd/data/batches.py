"""What every loader shares: the epoch's order, its length and the DDP sharding rules.

The in-memory ``BatchLoader`` (loader.py) and the streaming ``StreamLoader`` (stream.py) both derive from
``EpochBatches``, so they cannot drift apart; neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class EpochBatches:
    """What every loader shares: the epoch's sample order, the step count and the DDP sharding rule.

    Subclasses set ``batch_size, shuffle, drop_last, seed, rank, world_size, epoch`` and ``num_images``.
    """

    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    epoch: int

    @staticmethod
    def _check(batch_size: int, world_size: int, drop_last: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("a sharded loader (world_size > 1) needs drop_last=True so every rank runs the same steps")

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
