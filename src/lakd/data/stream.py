"""Streaming image folders: a list of files, decoded batch by batch in a thread pool while the model trains.

ImageNet (1.28 M JPEGs, ~140 GB decoded) cannot sit in RAM as uint8 like CIFAR. Here a split is only paths and
labels (``FileList``); ``StreamLoader`` decodes each batch with Pillow in threads (Pillow releases the GIL while
decoding and resampling, so threads run in parallel without worker processes), one or two batches ahead.

It behaves exactly as ``BatchLoader``: same epoch order (``EpochBatches._order``), same step count, same DDP
sharding (rank r takes every N-th sample of the global batch), same ``iter_from`` resume. Augmentation is drawn
per sample from a generator seeded by ``(seed, epoch, position in the epoch)``, so a sample's crop does not
depend on which rank decodes it or on where a resumed epoch starts.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lakd.data.batches import Batching, EpochBatches
from lakd.data.cifar import ImageArrays
from lakd.data.folder import list_image_folder
from lakd.data.transforms import load_eval_image, load_train_image

DEFAULT_IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_workers() -> int:
    """Decode threads when ``data.workers`` is unset: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


@dataclass
class FileList:
    """A split kept on disk: image ``files``, labels ``y`` int64, class names, and the side the loader outputs."""

    files: list[str]
    y: np.ndarray
    classes: list[str]
    image_size: int = DEFAULT_IMAGE_SIZE

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> FileList:
        index = np.asarray(index, dtype=np.int64)
        return FileList([self.files[int(i)] for i in index], self.y[index], self.classes, self.image_size)

    def to_arrays(self, workers: int | None = None) -> ImageArrays:
        """Decode every file with the evaluation transform into uint8 arrays (for small picks: stats, pictures)."""
        size = self.image_size
        x = np.empty((len(self), size, size, 3), dtype=np.uint8)
        with ThreadPoolExecutor(workers or default_workers(), thread_name_prefix="lakd-decode") as pool:
            for i, arr in enumerate(pool.map(lambda f: load_eval_image(f, size), self.files)):
                x[i] = arr
        return ImageArrays(x, self.y.copy(), self.classes)


def scan_file_list(path: str | Path, image_size: int = DEFAULT_IMAGE_SIZE) -> FileList:
    """Scan ``path/<class>/...`` once (sorted, nothing cached on disk) into a ``FileList``."""
    files, labels, classes = list_image_folder(path)
    return FileList(files, np.asarray(labels, dtype=np.int64), classes, image_size)


def sample_channel_stats(
    files: FileList, count: int = 256, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] of a fixed seeded sample of ``count`` images (evaluation transform).

    A streamed folder has no decoded array to average over; a few hundred images pin the statistics to well
    within what normalisation needs, and the fixed seed makes every run (and every DDP rank) agree.
    """
    pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:count])
    x = files.subset(pick).to_arrays().x.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())


class StreamLoader(EpochBatches):
    """``BatchLoader``'s interface over a ``FileList``: yields ``(x float32 (B, 3, S, S), y int64[, index])``.

    Training (``augment``): RandomResizedCrop(S, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip; otherwise
    resize the shorter side to S*256/224 and centre-crop S. ``workers`` threads decode; ``prefetch`` batches are
    decoded ahead of the one being consumed. Batches come in NHWC memory order (NCHW shape), i.e. already
    channels-last, which is what the trainer asks for on CPU and CUDA.
    """

    def __init__(self, files: FileList, batching: Batching, prefetch: int = 2) -> None:
        super().__init__(torch.from_numpy(files.y.astype(np.int64)), batching)
        self.files = files
        self.image_size = files.image_size
        self.workers = batching.workers or default_workers()
        self.prefetch = max(1, prefetch)
        # (x / 255 - mean) / std as one multiply-add over whole NHWC rows: per-channel factors tiled along a row
        # (W*3 values) keep the inner loop long; broadcasting over a size-3 last dim is ~4x slower.
        size = self.image_size
        self._row_scale = (1.0 / (255.0 * self.std)).repeat(size)
        self._row_shift = (-self.mean / self.std).repeat(size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def _load(self, out: np.ndarray, slot: int, index: int, position: int, epoch: int) -> None:
        """Decode sample ``index`` (at ``position`` of the epoch's global order) into ``out[slot]``."""
        path = self.files.files[index]
        if self.augment:
            rng = np.random.default_rng((self.seed % 2**63, epoch, position))
            out[slot] = load_train_image(path, self.image_size, rng)
        else:
            out[slot] = load_eval_image(path, self.image_size)

    def _finish(self, out: np.ndarray, parts: list[Future[None]], index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Wait for a batch's images, then normalise it (in a pool thread, off the training thread)."""
        for part in parts:
            part.result()
        b, h, w, c = out.shape
        rows = torch.from_numpy(out).view(b * h, w * c).float()
        batch = torch.addcmul(self._row_shift, rows, self._row_scale, out=rows).view(b, h, w, c).permute(0, 3, 1, 2)
        labels = self.labels[index]
        if self.pin_memory:
            batch, labels = batch.pin_memory(), labels.pin_memory()
        return (batch, labels, index) if self.return_index else (batch, labels)

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of the current epoch from ``start_step`` on (mid-epoch resume), as ``BatchLoader.iter_from``.

        Skipped steps cost nothing: a sample's augmentation depends on its position, not on earlier draws.
        """
        order = self._order()
        epoch, gb, size = self.epoch, self.global_batch_size, self.image_size
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lakd-decode")

        def submit(step: int) -> Future[tuple[torch.Tensor, ...]]:
            index = order[step * gb:(step + 1) * gb]
            positions = torch.arange(step * gb, step * gb + len(index))
            if self.world_size > 1:
                mine = slice(self.rank, None, self.world_size)
                index, positions = index[mine], positions[mine]
            out = np.empty((len(index), size, size, 3), dtype=np.uint8)
            parts = [pool.submit(self._load, out, slot, int(i), int(p), epoch)
                     for slot, (i, p) in enumerate(zip(index.tolist(), positions.tolist(), strict=True))]
            # Queued after its images, so it never waits on work queued behind it (no deadlock, any pool size).
            return pool.submit(self._finish, out, parts, index)

        steps = iter(range(start_step, len(self)))
        pending: deque[Future[tuple[torch.Tensor, ...]]] = deque()
        try:
            for step in steps:
                pending.append(submit(step))
                if len(pending) > self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(steps, None)
                if following is not None:
                    pending.append(submit(following))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
