"""The engine: the training loop, checkpoints, device/precision choice, metrics."""

from lakd.checkpoint import atomic_torch_save, load_checkpoint
from lakd.engine.device import Runtime, resolve_runtime
from lakd.engine.task import SupervisedTask, TrainTask
from lakd.engine.trainer import Trainer, evaluate, seed_everything

__all__ = [
    "Runtime",
    "SupervisedTask",
    "TrainTask",
    "Trainer",
    "atomic_torch_save",
    "evaluate",
    "load_checkpoint",
    "resolve_runtime",
    "seed_everything",
]
