"""A frozen teacher, run for inference only: BatchNorm folded into its convolutions, optionally compiled.

A distillation step runs the teacher forward once per batch, without gradients, on weights that never change.
Two exact rewrites make it cheaper:

* **folded** (always, for a teacher lakd builds): every eval-mode ``BatchNorm2d`` that reads a convolution's
  output directly is folded into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same
  function, one pass less over the activations. The pairs are found by watching one forward (a BatchNorm whose
  input *is* a Conv2d's output tensor); a fold is kept only if the model's outputs on a random batch stay the
  original's to float rounding, so an unusual model is never changed.
* **compiled** (``distill.compile``, lakd.compiling): the folded teacher's whole forward (logits and every stage
  output) compiled by ``torch.compile`` with inductor's weight freezing, for the training batch's shape (other
  shapes, e.g. a short last batch, run the folded model eagerly). It costs seconds once per run, so ``auto``
  only compiles runs long enough to repay it, and falls back to the folded model (with a note) if compilation
  fails or disagrees.

Only the teacher is rewritten: the student trains as written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lakd.compiling import Compiled
from lakd.models.base import StagedModel


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


def _flat(out: TeacherOutputs) -> list[torch.Tensor]:
    return [out.logits, *out.posts, *out.pres]


def _same(want: TeacherOutputs, model: StagedModel, example: torch.Tensor) -> bool:
    with torch.no_grad():
        got = all_outputs(model, example)
    return all(_close(a, b) for a, b in zip(_flat(want), _flat(got), strict=True))


class FrozenForward:
    """``TeacherOutputs`` of a frozen teacher, compiled (``lakd.compiling.Compiled``, inductor weight freezing)
    for the first batch shape it sees; other shapes (a short last batch) and a failed compilation run eagerly."""

    def __init__(self, model: StagedModel, compile_it: bool) -> None:
        self.model = model
        self.compiled = Compiled(self._eager, "the teacher", {"freezing": True}) if compile_it else None
        self._shape: tuple[int, ...] | None = None

    @property
    def note(self) -> str:
        return self.compiled.note if self.compiled is not None else ""

    @property
    def active(self) -> bool:
        return self.compiled is not None and self.compiled.active

    def _eager(self, x: torch.Tensor) -> TeacherOutputs:
        return all_outputs(self.model, x)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> TeacherOutputs:
        if self.compiled is None:
            return self._eager(x)
        if self._shape is None:
            self._shape = tuple(x.shape)
        return self.compiled(x) if tuple(x.shape) == self._shape else self._eager(x)
