"""Count the activation memory autograd keeps for backward, exactly, with saved-tensor hooks.

Peak RSS mixes in allocator caching and everything else in the process; this counts the unique storages held
for backward at each moment, which is what LAKD's local backward is designed to shrink.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SavedTensorMeter:
    """Live and peak bytes of unique tensor storages saved for backward while ``track()`` is active."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [reference count, bytes]

    def _pack(self, tensor: torch.Tensor) -> _SavedRef:
        return _SavedRef(self, tensor)

    @contextmanager
    def track(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield self

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class _SavedRef:
    def __init__(self, meter: SavedTensorMeter, tensor: torch.Tensor) -> None:
        self.meter, self.tensor = meter, tensor
        storage = tensor.untyped_storage()
        self.key = storage.data_ptr()
        entry = meter._refs.get(self.key)
        if entry is None:
            meter._refs[self.key] = [1, storage.nbytes()]
            meter.live += storage.nbytes()
            meter.peak = max(meter.peak, meter.live)
        else:
            entry[0] += 1

    def __del__(self) -> None:
        entry = self.meter._refs.get(self.key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.meter.live -= entry[1]
            del self.meter._refs[self.key]


def _unpack(ref: _SavedRef) -> torch.Tensor:
    return ref.tensor
