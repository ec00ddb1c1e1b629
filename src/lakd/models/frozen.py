"""A frozen teacher, run for inference only: BatchNorm folded into its convolutions, optionally compiled.

A distillation step runs the teacher forward once per batch, without gradients, on weights that never change: on
the CPU that forward is close to half of a KD step (ResNet-56 teacher, ResNet-20 student). Two exact rewrites
make it cheaper, and ``distill.teacher_inference`` chooses between them:

* ``folded``: every eval-mode ``BatchNorm2d`` that reads a convolution's output directly is folded into that
  convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``) — the same function, one pass less over the
  activations. The pairs are found by watching one forward (a BatchNorm whose input *is* a Conv2d's output
  tensor); the folded model is checked against the original on a random batch and discarded if any output
  differs beyond float rounding, so an unusual model is never changed.
* ``compiled``: the folded teacher's whole forward (logits and every stage output) compiled by ``torch.compile``
  with inductor's weight freezing, for the training batch's shape (other shapes, e.g. a short last batch, run
  the folded model eagerly). It costs seconds of compilation once per run, so ``auto`` only picks it for runs
  long enough to repay it, and it falls back to ``folded`` (with a note) if compilation fails on this machine.

Only the teacher is rewritten: the student trains as written (compiling the student's training step measured no
faster here; docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lakd.models.base import StagedModel

TEACHER_INFERENCE = ("auto", "compiled", "folded", "eager")
#: ``auto`` compiles only for at least this many training steps: compiling a ResNet-56 teacher takes 6-20 s on 2
#: CPU cores and saves 30-90 ms a step, so the cost is repaid after a few hundred steps; 1,000 leaves a margin.
COMPILE_MIN_STEPS = 1000


class TeacherOutputs(NamedTuple):
    """One teacher forward: logits, and every stage's post-activation and pre-activation output."""

    logits: torch.Tensor
    posts: list[torch.Tensor]
    pres: list[torch.Tensor]


def all_outputs(model: StagedModel, x: torch.Tensor) -> TeacherOutputs:
    """Logits and both forms of every stage output, from one forward (``forward_cut``, zoo and hooked alike)."""
    posts: list[torch.Tensor] = []
    pres: list[torch.Tensor] = []

    def keep(_index: int, post: torch.Tensor, pre: torch.Tensor) -> None:
        posts.append(post)
        pres.append(pre)

    logits = model.forward_cut(x, keep)
    return TeacherOutputs(logits, posts, pres)


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv path, bn path)`` for every BatchNorm2d whose input is exactly one Conv2d's output, in one forward.

    A module called more than once (shared weights) is left alone: folding it would change its other uses.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is held, so its id is not reused
    pairs: list[tuple[str, str]] = []
    calls: dict[str, int] = {}

    def after_conv(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (name, output)
        return hook

    def before_bn(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            conv = produced.get(id(inputs[0])) if inputs else None
            if conv is not None and conv[1] is inputs[0]:
                pairs.append((conv[0], name))
        return hook

    handles = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv(name)))
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.no_grad():
            all_outputs(model, example) if isinstance(model, StagedModel) else model(example)
    finally:
        for handle in handles:
            handle.remove()
    used = [conv for conv, _ in pairs]
    return [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls[bn] == 1 and used.count(conv) == 1]


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to fp32 rounding through a deep net (relative to the tensor's largest value)."""
    if a.shape != b.shape:
        return False
    return not a.numel() or bool(((a - b).abs().max() <= 1e-4 * (1.0 + a.abs().max())).item())


def fold_batchnorm(model: StagedModel, example: torch.Tensor) -> tuple[StagedModel, int]:
    """``(model with its conv->BN pairs folded, number folded)``; ``model`` itself is never changed.

    A fold is kept only if the folded model's outputs on ``example`` (logits and every stage output, fp32, eval
    mode) are the original's to float rounding: a convolution whose raw output is also used elsewhere (a
    residual that skips the BatchNorm, a stage output) must keep its BatchNorm. All pairs are tried at once
    first, then one by one when that changes an output.
    """
    was_training = model.training
    model.eval()
    try:
        pairs = _conv_bn_pairs(model, example)
        if not pairs:
            return model, 0
        with torch.no_grad():
            want = all_outputs(model, example)
        folded = _folded(model, pairs)
        if _same(want, folded, example):
            return folded, len(pairs)
        kept: list[tuple[str, str]] = []
        for pair in pairs:
            trial = _folded(model, [*kept, pair])
            if _same(want, trial, example):
                kept, folded = [*kept, pair], trial
        return (folded, len(kept)) if kept else (model, 0)
    finally:
        model.train(was_training)


def _folded(model: StagedModel, pairs: list[tuple[str, str]]) -> StagedModel:
    folded = copy.deepcopy(model)
    for conv_path, bn_path in pairs:
        conv, bn = folded.get_submodule(conv_path), folded.get_submodule(bn_path)
        _replace(folded, conv_path, fuse_conv_bn_eval(conv, bn))
        _replace(folded, bn_path, nn.Identity())
    return folded


def _same(want: TeacherOutputs, model: StagedModel, example: torch.Tensor) -> bool:
    with torch.no_grad():
        got = all_outputs(model, example)
    return all(_close(a, b) for a, b in zip(_flat(want), _flat(got), strict=True))


def can_compile(device: torch.device) -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) can plausibly run here, and why not."""
    if sys.platform == "win32":
        return False, "torch.compile is not used on Windows"
    if device.type == "cpu":
        if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return False, "no C++ compiler on PATH (inductor needs one on the CPU)"
        return True, ""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed"
        return True, ""
    return False, f"not on {device.type}"


class FrozenForward:
    """``TeacherOutputs`` of a frozen teacher, compiled for the first batch shape it sees, eager for others.

    If compilation fails, the eager forward is used from then on and ``note`` says why (the run goes on).
    """

    def __init__(self, model: StagedModel, compile_it: bool) -> None:
        self.model = model
        self.compile_it = compile_it
        self.note = ""
        self._compiled: Callable[[torch.Tensor], TeacherOutputs] | None = None
        self._shape: tuple[int, ...] | None = None
        self._checked = False

    def _eager(self, x: torch.Tensor) -> TeacherOutputs:
        return all_outputs(self.model, x)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> TeacherOutputs:
        if not self.compile_it:
            return self._eager(x)
        if self._shape is None:
            self._shape = tuple(x.shape)
            self._compiled = torch.compile(self._eager, dynamic=False, options={"freezing": True})
        if tuple(x.shape) != self._shape or self._compiled is None:
            return self._eager(x)
        first = not self._checked
        try:
            out = self._compiled(x)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: say so once, run eagerly
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return self._give_up(f"teacher compilation failed ({type(exc).__name__}: {reason[:200]})", x)
        if first:  # once: the compiled forward must compute what the eager one does (to bf16 rounding)
            self._checked = True
            eager = self._eager(x)
            if not all(_agree(a, b) for a, b in zip(_flat(out), _flat(eager), strict=True)):
                return self._give_up("the compiled teacher's outputs differ from the eager ones", x)
        return out

    def _give_up(self, why: str, x: torch.Tensor) -> TeacherOutputs:
        self.compile_it, self._compiled = False, None
        self.note = f"{why}; running the teacher folded, not compiled"
        print(f"note: {self.note}", file=sys.stderr)
        return self._eager(x)


def _flat(out: TeacherOutputs) -> list[torch.Tensor]:
    return [out.logits, *out.posts, *out.pres]


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Loose agreement (a few bf16 roundings through a deep net): catches a wrong program, not rounding."""
    if a.shape != b.shape:
        return False
    scale = b.float().abs().max().item() if b.numel() else 0.0
    return not b.numel() or bool(((a.float() - b.float()).abs().max() <= 0.05 * (1.0 + scale)).item())
