"""Accuracy, throughput and memory numbers, and the per-epoch CSV/JSONL log."""

from __future__ import annotations

import csv
import io
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lakd.atomic import atomic_write_text
from lakd.errors import LakdError


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == y[:, None]
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class MetricsLog:
    """One row per epoch, appended to ``metrics.jsonl`` and rewritten into ``metrics.csv``.

    The CSV is rewritten from the whole history each time, so a column that first appears late (a loss term
    that starts with a warm-up) still gets a header.
    """

    def __init__(self, out_dir: Path | None, tensorboard: bool = False) -> None:
        self.out_dir = out_dir
        self.rows: list[dict[str, Any]] = []
        self.tb: Any = None
        self.tensorboard = tensorboard and out_dir is not None
        if self.tensorboard:  # fail before training starts, not after the first epoch
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise LakdError("train.tensorboard = true needs the tensorboard package: pip install tensorboard "
                                "(or leave it off; metrics.csv / metrics.jsonl are always written)") from None

    def restore(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        self._write_all()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.out_dir is None:
            return
        self._write_all()  # rewritten whole and atomically: never torn, never written through a planted link
        if self.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tb"))
            # Grouped as train/..., val/..., test/... so TensorBoard shows one panel per split.
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    split, _, name = key.partition("_")
                    tag = f"{split}/{name}" if split in ("train", "val", "test") and name else key
                    self.tb.add_scalar(tag, value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _write_all(self) -> None:
        if self.out_dir is None:
            return
        atomic_write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.rows))
        self._write_csv()

    def _write_csv(self) -> None:
        assert self.out_dir is not None
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out_dir / "metrics.csv", text.getvalue())
