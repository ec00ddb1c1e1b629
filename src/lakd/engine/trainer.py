"""The training loop. It drives any ``TrainTask`` (supervised or a distiller) without knowing which.

Per step: autocast forward -> sum of named losses -> backward -> SGD step, with the LR set from a stateless
schedule. Per epoch: evaluate the student on val and test, log one metrics row, save ``last.pt`` and (on a new
best validation top-1) ``best.pt`` atomically.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lakd.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint
from lakd.config import RunConfig
from lakd.data import Batching, DatasetSplits, FileList, ImageArrays, make_loader
from lakd.data.batches import augmentation_for
from lakd.engine.device import Runtime
from lakd.engine.distributed import SINGLE, DistEnv, all_reduce_sum, average_gradients, broadcast_module, sync_batchnorm
from lakd.engine.metrics import MetricsLog, peak_memory_mb, topk_correct
from lakd.engine.schedule import lr_at
from lakd.engine.task import TrainTask
from lakd.errors import LakdError
from lakd.models.weights import non_finite_tensors


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so model init and any library randomness repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


ESTIMATE_AFTER_STEPS = 10  # timed steps before the run's time estimate is printed


class NonFiniteLoss(LakdError):
    """A loss (or a weight) became NaN/inf; the message names the term."""


class TrainingStopped(Exception):
    """SIGTERM / Ctrl-C asked the run to stop; a resumable checkpoint was saved first."""

    def __init__(self, signum: int, checkpoint: Path | None, where: str) -> None:
        self.signum, self.checkpoint, self.where = signum, checkpoint, where
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


def keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` (a hard link where possible) without ``path`` ever being absent."""
    tmp = previous.with_name(previous.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this filesystem
        shutil.copy2(path, tmp)
    os.replace(tmp, previous)


@contextlib.contextmanager
def stop_on_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Turn SIGTERM / SIGINT into a request to stop at the next step boundary (a second Ctrl-C stops at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        on_signal(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # impatient second Ctrl-C: KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, arrays: ImageArrays | FileList, mean: tuple[float, ...], std: tuple[float, ...],
    runtime: Runtime, batch_size: int = 500, workers: int | None = None, progress: str | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean CE loss and img/s of ``model`` on a split (no augmentation).

    ``workers``: decode threads when the split is streamed from files (ignored for in-memory arrays).
    ``progress``: a progress bar with this label (None: none).
    """
    was_training = model.training
    model.eval()
    loader = make_loader(arrays, Batching(batch_size, mean, std, pin_memory=runtime.device.type == "cuda",
                                          workers=workers))
    correct1 = correct5 = 0
    loss_sum = 0.0
    predicted: torch.Tensor | None = None  # how often each class is predicted: a collapsed model shows here
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True,
                     mininterval=1.0):
        x, y = runtime.to_input(x), y.to(runtime.device)
        with runtime.autocast():
            out = model(x)
        logits = (out[0] if isinstance(out, tuple) else out).float()  # zoo models also return their features
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        c1, c5 = topk_correct(logits, y)
        correct1 += c1
        correct5 += c5
        counts = torch.bincount(logits.argmax(1).cpu(), minlength=logits.shape[1])
        predicted = counts if predicted is None else predicted + counts
    elapsed = time.perf_counter() - start
    model.train(was_training)
    n = max(len(arrays), 1)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "img_per_s": len(arrays) / max(elapsed, 1e-9),
            "pred_top_share": float(predicted.max()) / n if predicted is not None else 0.0}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor], runtime: Runtime) -> int:
    """Re-estimate ``model``'s BatchNorm running statistics from ``batches`` (a plain average over them, by
    ``torch.optim.swa_utils.update_bn``); returns how many BatchNorm layers there are. After a short run a slow
    BatchNorm momentum (torchvision's MobileNetV3: 0.01) leaves statistics far from the weights' own."""
    from torch.optim.swa_utils import update_bn

    norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if norms:
        update_bn((runtime.to_input(x) for x in batches), model, device=runtime.device)
    return norms


class Trainer:
    """Fit a task for ``cfg.train.epochs`` epochs; checkpoints and metrics go to ``out_dir`` (if given)."""

    def __init__(
        self,
        task: TrainTask,
        cfg: RunConfig,
        splits: DatasetSplits,
        runtime: Runtime,
        out_dir: Path | None,
        meta: dict[str, Any],
        log: Callable[[str], None] = print,
        dist_env: DistEnv = SINGLE,
    ) -> None:
        self.dist = dist_env
        if dist_env.enabled:
            if cfg.data.batch_size % dist_env.world_size:
                raise LakdError(f"data.batch_size={cfg.data.batch_size} is the global batch and must divide evenly "
                                f"over {dist_env.world_size} processes")
            sync_batchnorm(task, runtime.device)  # BatchNorm statistics of the global batch, as one process
            broadcast_module(task)
            if not dist_env.is_main:  # only rank 0 prints and writes
                log, out_dir = (lambda _msg: None), None
        self.task = task
        self.cfg = cfg
        self.splits = splits
        self.runtime = runtime
        self.out_dir = out_dir
        self.meta = meta
        self.log = log
        if runtime.channels_last:
            task.student().to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        params = [p for p in task.learnable_parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype is torch.float16)
        self.train_loader = make_loader(splits.train, Batching(
            cfg.data.batch_size // dist_env.world_size, splits.mean, splits.std, shuffle=True,
            augment=cfg.data.augment, crop_padding=cfg.data.crop_padding, drop_last=True, seed=cfg.train.seed,
            rank=dist_env.rank, world_size=dist_env.world_size, return_index=task.needs_index,
            pin_memory=runtime.device.type == "cuda", workers=cfg.data.workers,
            augmentation=augmentation_for(splits.image_size) if cfg.data.augmentation == "auto"
            else cfg.data.augmentation))
        if len(self.train_loader) == 0:
            raise LakdError(f"data.batch_size={cfg.data.batch_size} is larger than the training set "
                            f"({self.train_loader.num_images} images): no full batch to train on")
        self.metrics = MetricsLog(out_dir, tensorboard=cfg.train.tensorboard)
        self.start_epoch = 0
        self.best: dict[str, Any] = {"val_top1": -1.0, "epoch": -1}
        self.stop_signal: int | None = None  # set by SIGTERM / Ctrl-C; honoured at the next step boundary
        self.partial: dict[str, Any] | None = None  # progress inside an epoch restored from a mid-epoch checkpoint
        self._last_refused = False  # last.pt was unreadable at resume: the next save must not keep it as previous

    # -- checkpoints -------------------------------------------------------------------------------------
    def _state(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "partial": partial,  # None at an epoch boundary; else the epoch in progress and its step
            "format": CHECKPOINT_FORMAT,
            "model": self.task.student().state_dict(),
            "meta": self.meta,
            "task": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,  # epochs completed
            "best": dict(self.best),
            "history": list(self.metrics.rows),
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def _repair_best(self, last_path: Path, ckpt: dict[str, Any]) -> None:
        """``best.pt`` is written right after ``last.pt``; a crash in between leaves it one best epoch behind.

        When ``last.pt`` records itself as the best epoch and ``best.pt`` holds an older one, ``best.pt`` is
        rewritten from ``last.pt`` (the same state), with a note; nothing is lost.
        """
        if self.out_dir is None or not self.dist.is_main or ckpt.get("partial") is not None:
            return
        best_epoch = int(self.best.get("epoch", -1))
        if best_epoch != int(ckpt["epoch"]):
            return
        best_path = self.out_dir / "best.pt"
        try:
            stale = int(load_checkpoint(best_path).get("epoch", -1)) != best_epoch if best_path.is_file() else True
        except LakdError:
            stale = True  # torn or foreign: replace it
        if stale:
            self.log(f"note: '{best_path}' did not hold the best epoch ({best_epoch}); rewritten from '{last_path}'")
            atomic_torch_save(ckpt, best_path)

    def resume_from(self, path: Path) -> None:
        """Restore model, task extras, optimizer, epoch (and step), best, history and RNG from a ``last.pt``.

        If ``path`` is missing or unreadable (torn by a failing disk, truncated by hand), the previous one
        (``last.prev.pt``, kept at every save) is used instead, with a warning saying so.
        """
        path = Path(path)
        previous = path.with_name(path.stem + ".prev" + path.suffix)
        try:
            ckpt = load_checkpoint(path, map_location=self.runtime.device)
        except LakdError as exc:
            if not previous.is_file():
                raise
            self.log(f"warning: {exc}; resuming from the previous checkpoint '{previous}' instead")
            ckpt = load_checkpoint(previous, map_location=self.runtime.device)
            path = previous
            self._last_refused = True  # never rotate the refused last.pt over the good previous one
        for key in ("task", "optimizer", "epoch", "rng"):
            if key not in ckpt:
                raise LakdError(f"checkpoint '{path}' has no '{key}': it holds weights only and cannot resume")
        try:
            self.task.load_state_dict(ckpt["task"])
        except RuntimeError as exc:
            raise LakdError(f"checkpoint '{path}' does not match this run's model/method: {exc}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.partial = ckpt.get("partial")
        self.best = dict(ckpt.get("best", self.best))
        self._repair_best(path, ckpt)
        self.metrics.restore(ckpt.get("history", []))
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
        where = f", step {self.partial['step']}" if self.partial else ""
        self.log(f"resumed from {path} at epoch {self.start_epoch}/{self.cfg.train.epochs}{where}")

    def _check_finite_weights(self, where: str) -> None:
        """Nothing non-finite is ever saved as a checkpoint: the optimizer step that makes a weight NaN/inf stops
        the run here, before the save, so ``last.pt`` / ``best.pt`` keep the last finite weights."""
        bad = non_finite_tensors(self.task.state_dict())
        if bad:
            raise NonFiniteLoss(f"weights became non-finite {where} ({', '.join(bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''}); stopping without saving them (the last good "
                                "checkpoint is kept). Lower optim.lr or the loss weights")

    def _save(self, epoch: int, is_best: bool, partial: dict[str, Any] | None = None) -> None:
        self._check_finite_weights(f"at epoch {epoch + (0 if partial is None else 1)}")
        if self.out_dir is None:
            return
        state = self._state(epoch, partial)
        last = self.out_dir / "last.pt"
        try:
            # keep the previous good one: resume falls back to it if last.pt is ever unreadable (a last.pt that
            # was refused at resume is not good: it is replaced, and last.prev.pt stays as it is)
            if last.is_file() and not self._last_refused:
                keep_previous(last, self.out_dir / "last.prev.pt")
            atomic_torch_save(state, last)
            self._last_refused = False
            if is_best:
                atomic_torch_save(state, self.out_dir / "best.pt")
        except OSError as exc:  # disk full, quota, permissions: atomic writes left the earlier files intact
            raise LakdError(f"could not write a checkpoint to '{self.out_dir}' ({exc.strerror or exc}); the "
                            "checkpoints already there are intact — free space and continue with --resume") from None

    def _on_signal(self, signum: int) -> None:
        self.stop_signal = signum
        self.log(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step")

    # -- loop --------------------------------------------------------------------------------------------
    def _lr(self, epoch: float) -> float:
        s = self.cfg.schedule
        return lr_at(epoch, self.cfg.optim.lr, self.cfg.train.epochs, s.name, s.warmup_epochs, s.milestones,
                     s.gamma, s.min_lr)

    def _check_finite_gradients(self, values: dict[str, float], epoch: int, step: int) -> None:
        """Every loss term finite but the gradient not (a huge term weight, a huge lr): stop before the step makes
        the weights NaN, naming the largest term, rather than blame whichever term turns NaN a step later. (With
        fp16's grad scaler a non-finite gradient is the scaler's to skip.)"""
        if self.scaler.is_enabled():
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return
        name, v = max(values.items(), key=lambda item: abs(item[1])) if values else ("(none)", float("nan"))
        raise NonFiniteLoss(f"the gradient became non-finite at epoch {epoch + 1}, step {step}, although every loss "
                            f"term was finite (the largest: '{name}' = {v:.3g}); stopping (the last good checkpoint "
                            "is kept). Lower this term's weight or optim.lr")

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward through the grad scaler (a no-op scaler unless fp16)."""
        self.scaler.scale(loss).backward()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.task.train()
        loader = self.train_loader
        loader.set_epoch(epoch)
        steps = self.cfg.train.epoch_steps(len(loader))
        sums: dict[str, float] = {}
        correct = seen = first_step = 0
        elapsed_before = 0.0
        if self.partial is not None and self.partial["epoch"] == epoch:  # continue a mid-epoch checkpoint
            first_step = int(self.partial["step"])
            elapsed_before = float(self.partial["elapsed"])
            # The saved sums are over every rank (see the stop below): one rank carries them, the others add theirs
            if self.dist.is_main:
                sums = dict(self.partial["sums"])
                correct, seen = int(self.partial["correct"]), int(self.partial["seen"])
        self.partial = None
        if self.runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.runtime.device)
        batches = loader.iter_from(first_step)
        bar = tqdm(itertools.islice(batches, max(steps - first_step, 0)), initial=first_step, total=steps,
                   desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", disable=not self.cfg.train.progress,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        start = time.perf_counter()
        for step, batch in enumerate(bar, start=first_step):
            lr = self._lr(epoch + step / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self.runtime.to_input(batch[0]), batch[1].to(self.runtime.device, non_blocking=True)
            extra = {"index": batch[2].to(self.runtime.device)} if len(batch) > 2 else {}
            progress = (epoch + step / steps) / self.cfg.train.epochs  # fraction of training done, in [0, 1]
            self.optimizer.zero_grad(set_to_none=True)
            # The task runs its own backward calls (once, or module by module for LAKD), through ours.
            # the step's context: where training is, as a fraction and in epochs (warm-ups stated in epochs)
            logits, losses = self.task.train_step(x, y, progress, backward=self._backward,
                                                  autocast=self.runtime.autocast,
                                                  epoch=progress * self.cfg.train.epochs, **extra)
            values = {name: float(v.detach()) for name, v in losses.items()}
            stop_now = self._agree_to_stop(values, epoch, step)
            if self.dist.enabled:
                average_gradients(self.params, self.dist.world_size)
            self._check_finite_gradients(values, epoch, step)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, v in values.items():
                sums[name] = sums.get(name, 0.0) + v
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(values.values()):.3f}", acc=f"{100 * correct / seen:.1f}")
            if epoch == self.start_epoch and step == first_step + 1:
                timed_from = time.perf_counter()  # after the first two steps (lazy initialisation, warm-up)
            if epoch == self.start_epoch and step == first_step + 1 + ESTIMATE_AFTER_STEPS:
                self._log_estimate(time.perf_counter() - timed_from, ESTIMATE_AFTER_STEPS, step + 1, steps, epoch)
            if stop_now and step + 1 < steps:
                bar.close()
                self._stop_mid_epoch(epoch, step + 1, steps, sums, correct, seen,
                                     elapsed_before + time.perf_counter() - start)
        elapsed = elapsed_before + time.perf_counter() - start
        bar.close()
        batches.close()  # an epoch cut by train.max_steps_per_epoch: the loader's threads stop now, not at collection
        if self.dist.enabled:  # metrics over the global batch: sum over ranks (sums are means per rank-step)
            names = sorted(sums)
            reduced = all_reduce_sum([*(sums[n] for n in names), correct, seen], self.runtime.device)
            sums = {n: v / self.dist.world_size for n, v in zip(names, reduced, strict=False)}
            correct, seen = int(reduced[-2]), int(reduced[-1])
        row = {f"train_{name}": s / steps for name, s in sums.items()}
        row.update({"train_loss": sum(sums.values()) / steps, "train_top1": 100.0 * correct / max(seen, 1),
                    "lr": self._lr(epoch), "train_time_s": elapsed, "img_per_s": seen / max(elapsed, 1e-9),
                    "peak_mem_mb": peak_memory_mb(self.runtime.device)})
        return row

    def _bar(self, split: str) -> str | None:
        """The evaluation's progress-bar label (with train.progress), so an epoch's evaluation is not silence."""
        return f"evaluating {split}" if self.cfg.train.progress else None

    def _log_estimate(self, elapsed: float, timed: int, done: int, steps: int, epoch: int) -> None:
        """Early in a run: how long its training steps will take, from ``timed`` steps after the first two
        (warm-up), so a user sees the cost up front rather than after the first epoch."""
        per_step = elapsed / timed
        remaining = (self.cfg.train.epochs - epoch) * steps - done
        self.log(f"estimate: {per_step * 1000:.0f} ms a step, ~{_minutes(remaining * per_step)} of training left "
                 f"({self.cfg.train.epochs - epoch} epochs x {steps} steps; evaluation adds to it; it scales with "
                 "the machine's load)")

    def _agree_to_stop(self, values: dict[str, float], epoch: int, step: int) -> bool:
        """Whether to stop after this step (a signal here or, under torchrun, on any rank); a non-finite loss term
        on any rank stops the run with one error naming it."""
        bad = [(name, v) for name, v in values.items() if not math.isfinite(v)]
        stop_now = self.stop_signal is not None
        if self.dist.enabled:  # every rank must agree to stop (signal or NaN), or the others would hang
            stop_any, bad_any = all_reduce_sum([float(stop_now), float(bool(bad))], self.runtime.device)
            # the agreed answer, not this rank's flag: a signal landing after the agreement waits a step
            stop_now = bool(stop_any)
            if stop_now and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM
            if bad_any and not bad:
                bad = [("(on another rank)", float("nan"))]
        if bad:
            name, v = bad[0]
            raise NonFiniteLoss(f"loss term '{name}' became {v} at epoch {epoch + 1}, step {step}; "
                                "stopping (the last good checkpoint is kept). Lower optim.lr or "
                                "this term's weight")
        return stop_now

    def _stop_mid_epoch(self, epoch: int, done: int, steps: int, sums: dict[str, float], correct: int, seen: int,
                        elapsed: float) -> None:
        """Save a mid-epoch checkpoint after ``done`` steps (with every rank's partial sums, so the resumed epoch's
        metrics are the same as an uninterrupted one's) and stop."""
        if self.dist.enabled:
            names = sorted(sums)
            reduced = all_reduce_sum([*(sums[n] for n in names), correct, seen], self.runtime.device)
            sums = dict(zip(names, reduced, strict=False))
            correct, seen = int(reduced[-2]), int(reduced[-1])
        partial = {"epoch": epoch, "step": done, "sums": sums, "correct": correct, "seen": seen, "elapsed": elapsed}
        self._save(epoch, is_best=False, partial=partial)
        assert self.stop_signal is not None
        raise TrainingStopped(self.stop_signal, self.out_dir / "last.pt" if self.out_dir else None,
                              f"at epoch {epoch + 1}, step {done}/{steps}")

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end (or to epoch ``stop_after``); return the summary."""
        cfg = self.cfg
        fit_start = time.perf_counter()
        end = cfg.train.epochs if stop_after is None else min(stop_after, cfg.train.epochs)
        try:
            with stop_on_signals(self._on_signal):
                self._fit_epochs(end)
        finally:
            self.metrics.close()
        summary = self.summary()
        summary["fit_wall_s"] = time.perf_counter() - fit_start
        return summary

    def _fit_epochs(self, end: int) -> None:
        cfg = self.cfg
        student = self.task.student()
        for epoch in range(self.start_epoch, end):
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update(self.train_epoch(epoch))
            if not self.dist.is_main:  # rank 0 evaluates and writes; the others wait to agree on stopping
                self._stop_at_epoch_end(epoch, end, None)
                continue
            eval_start = time.perf_counter()
            self._recalibrate_batchnorm(epoch)
            if self.splits.val is not None:
                for k, v in evaluate(student, self.splits.val, self.splits.mean, self.splits.std, self.runtime,
                                     cfg.data.eval_batch_size, cfg.data.workers, self._bar("val")).items():
                    row[f"val_{k}"] = v
            if (cfg.train.eval_test or self.splits.val is None) and self.splits.test is not None:
                for k, v in evaluate(student, self.splits.test, self.splits.mean, self.splits.std, self.runtime,
                                     cfg.data.eval_batch_size, cfg.data.workers, self._bar("test")).items():
                    row[f"test_{k}"] = v
            row["eval_time_s"] = time.perf_counter() - eval_start
            # Model selection uses validation only; without a validation split "best" is simply the last.
            score = row.get("val_top1", float(epoch))
            is_best = score > self.best["val_top1"] or self.splits.val is None
            if is_best:
                self.best = {"val_top1": score, "epoch": epoch + 1, "test_top1": row.get("test_top1")}
            self.metrics.append(row)
            self._save(epoch + 1, is_best)
            self.log(self._format_row(row))
            if epoch == 0:
                self._warn_if_useless(row)
            self._stop_at_epoch_end(epoch, end, self.out_dir / "last.pt" if self.out_dir else None)

    def _recalibrate_batchnorm(self, epoch: int) -> None:
        """``train.bn_recalibrate`` batches of training images (no augmentation, a seeded order per epoch) set the
        student's BatchNorm statistics before it is evaluated (and saved)."""
        count = self.cfg.train.bn_recalibrate
        if not count:
            return
        loader = make_loader(self.splits.train, Batching(
            self.cfg.data.batch_size, self.splits.mean, self.splits.std, shuffle=True, seed=self.cfg.train.seed,
            pin_memory=self.runtime.device.type == "cuda", workers=self.cfg.data.workers))
        loader.set_epoch(epoch)
        batches = (batch[0] for _, batch in zip(range(count), loader, strict=False))
        recalibrate_batchnorm(self.task.student(), batches, self.runtime)

    def _warn_if_useless(self, row: dict[str, Any]) -> None:
        """After the first epoch: a student at chance level, or predicting one class, gets a warning with the
        likely causes, instead of a run that ends at chance with exit 0."""
        split = "val" if "val_top1" in row else "test"
        if f"{split}_top1" not in row:
            return
        classes = self.splits.num_classes
        chance = 100.0 / classes
        top1, share = row[f"{split}_top1"], row.get(f"{split}_pred_top_share", 0.0)
        collapsed = classes > 2 and share >= 0.9
        if top1 > 1.5 * chance and not collapsed:
            return
        what = f"{split} top-1 is {top1:.2f} % (chance: {chance:.2f} %)" + (
            f" and {100 * share:.0f} % of its predictions are one class" if collapsed else "")
        if row["train_top1"] > 2 * chance and not self.cfg.train.bn_recalibrate:
            cause = (f"train accuracy is {row['train_top1']:.2f} %, so the model learns but is evaluated wrongly: "
                     "its BatchNorm running statistics are likely stale (a slow BatchNorm momentum, e.g. "
                     "torchvision's MobileNetV3); set train.bn_recalibrate=50 to re-estimate them before evaluation")
        else:
            cause = (f"train accuracy is {row['train_top1']:.2f} % too: check optim.lr (too high diverges, too low "
                     "stalls), that labels match images, and that a teacher gets the input size and normalisation "
                     "it was trained with")
        self.log(f"warning: after epoch 1 the student is at chance: {what}. Likely cause: {cause}")

    def _stop_at_epoch_end(self, epoch: int, end: int, checkpoint: Path | None) -> None:
        """Stop after this epoch (its checkpoint saved) if any rank was asked to: a signal that reaches one rank
        between two steps' agreement (e.g. while rank 0 evaluates) must stop every rank, or the others hang."""
        stop = self.stop_signal is not None
        if self.dist.enabled:
            (asked,) = all_reduce_sum([float(stop)], self.runtime.device)
            stop = bool(asked)
            if stop and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM
        if stop and epoch + 1 < end:
            raise TrainingStopped(self.stop_signal, checkpoint, f"after epoch {epoch + 1}")

    def summary(self) -> dict[str, Any]:
        rows = self.metrics.rows
        last = rows[-1] if rows else {}
        train_rows = [r for r in rows if "img_per_s" in r]
        return {
            "epochs": len(rows),
            "last_test_top1": last.get("test_top1"),
            "last_val_top1": last.get("val_top1"),
            "best_epoch": self.best["epoch"],
            "best_val_top1": self.best["val_top1"] if self.splits.val is not None else None,
            "best_test_top1": self.best.get("test_top1"),
            "train_img_per_s": float(np.mean([r["img_per_s"] for r in train_rows])) if train_rows else None,
            "peak_mem_mb": max((r["peak_mem_mb"] for r in train_rows), default=None),
            "train_wall_s": sum(r.get("train_time_s", 0.0) + r.get("eval_time_s", 0.0) for r in rows),
        }

    def _format_row(self, row: dict[str, Any]) -> str:
        parts = [f"epoch {row['epoch']}/{self.cfg.train.epochs}", f"loss {row['train_loss']:.4f}",
                 f"train {row['train_top1']:.2f}%"]
        if "val_top1" in row:
            parts.append(f"val {row['val_top1']:.2f}%")
        if "test_top1" in row:
            parts.append(f"test {row['test_top1']:.2f}%")
        parts += [f"lr {row['lr']:.4f}", f"{row['img_per_s']:.0f} img/s",
                  f"{row['train_time_s'] + row['eval_time_s']:.0f}s", f"peak {row['peak_mem_mb']:.0f} MB"]
        left = self.cfg.train.epochs - row["epoch"]
        if left > 0:  # the epochs trained in this process so far, as the estimate of the rest
            walls = [r["train_time_s"] + r["eval_time_s"] for r in self.metrics.rows[-3:]]
            parts.append(f"~{_minutes(left * sum(walls) / len(walls))} left")
        return " | ".join(parts)
