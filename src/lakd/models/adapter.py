"""Any ``nn.Module`` as a staged model: a declarative stage spec, forward hooks, the model's code untouched.

A user's teacher or student is a torchvision or timm model, or their own module. A :class:`StageSpec` names the
module paths whose outputs are the stages (``["layer1", "layer2", "layer3", "layer4"]`` for a torchvision
ResNet); the logits are whatever the model's own ``forward`` returns. :class:`HookedModel` wraps the module
unchanged and gives the distillers what they use from a zoo model: ``(logits, per-stage features)``, declared
stage shapes, and, for LAKD's local modules, a forward in which chosen stage outputs are *cut* (detached, so no
gradient crosses them) with a callback at every stage so a module's loss can be backpropagated as soon as the
module has run.

Token models (Vision Transformers) declare ``layout="tokens"``: a stage output ``(B, N, D)`` is seen by the
distillers as the map ``(B, D, H/p, W/p)`` of its patch tokens (the leading class/register tokens dropped), so a
ViT can teach a CNN; the tokens themselves flow through the model unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lakd.errors import LakdError, did_you_mean
from lakd.models.base import StagedModel

LAYOUTS = ("nchw", "nhwc", "tokens")

#: ``on_stage(index, feature, pre_activation)``: called after every stage; ``cut(index)``: detach that output?
StageCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class StageSpec:
    """Which outputs of a model are its stages, and how to read them as (B, C, H, W) maps.

    * ``stages``: module paths (as in ``model.named_modules()``), in the order the forward runs them; each stage
      must take (only) the previous stage's output, directly or through parameter-free code, for LAKD's local
      modules to be gradient-isolated (checked by gradients when LAKD builds its modules).
    * ``layout``: ``nchw`` (convolutional maps), ``nhwc`` (channels-last outputs, e.g. Swin), ``tokens``
      (``(B, N, D)``, patch tokens after ``prefix_tokens`` leading ones, on a grid of input side / ``patch_size``).
    """

    stages: tuple[str, ...]
    layout: str = "nchw"
    prefix_tokens: int = 0
    patch_size: int | None = None
    #: where the logits are in what the forward returns, when it is not the logits tensor itself: a key of a dict,
    #: an attribute of an output object (Hugging Face's ``"logits"``), or a position in a tuple
    logits: str | int | None = None
    source: str = field(default="user", compare=False)  # where the spec came from (a preset's name), for messages

    def __post_init__(self) -> None:
        if isinstance(self.stages, str) or not isinstance(self.stages, Sequence) or not self.stages:
            raise LakdError(f"stage spec: 'stages' must be a non-empty list of module paths, got {self.stages!r}")
        if not all(isinstance(s, str) and s for s in self.stages):
            raise LakdError(f"stage spec: every stage must be a module path (a non-empty string): {self.stages!r}")
        if len(set(self.stages)) != len(self.stages):
            raise LakdError(f"stage spec: a module path appears twice in {list(self.stages)}")
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.layout not in LAYOUTS:
            raise LakdError(f"stage spec: layout '{self.layout}' is not one of {', '.join(LAYOUTS)}")
        if self.layout == "tokens" and not (isinstance(self.patch_size, int) and self.patch_size > 0):
            raise LakdError("stage spec: layout 'tokens' needs patch_size (the side of a patch in pixels)")
        if self.prefix_tokens < 0:
            raise LakdError(f"stage spec: prefix_tokens must be >= 0, got {self.prefix_tokens}")
        if self.logits is not None and not (isinstance(self.logits, str) and self.logits
                                            or isinstance(self.logits, int) and not isinstance(self.logits, bool)):
            raise LakdError(f"stage spec: logits must be a key/attribute name or a tuple position, got "
                            f"{self.logits!r}")


def as_spec(spec: StageSpec | Sequence[str] | dict[str, Any]) -> StageSpec:
    """A :class:`StageSpec` from a spec, a list of paths, or a mapping of its fields (configs are data)."""
    if isinstance(spec, StageSpec):
        return spec
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"stages", "layout", "prefix_tokens", "patch_size", "logits"})
        if unknown:
            raise LakdError(f"stage spec: unknown key(s) {unknown}; known: stages, layout, prefix_tokens, patch_size, "
                            "logits")
        return StageSpec(**spec)
    return StageSpec(tuple(spec))


class HookedModel(StagedModel):
    """An unmodified ``nn.Module`` seen through a :class:`StageSpec` (see the module docstring).

    Its ``state_dict`` is the wrapped model's under ``model.``; export and checkpoints use the wrapped model.
    """

    runs_stage_by_stage = False

    def __init__(self, model: nn.Module, spec: StageSpec | Sequence[str] | dict[str, Any],
                 name: str | None = None) -> None:
        nn.Module.__init__(self)
        self.model = model
        self.spec = as_spec(spec)
        self.arch_name = name or type(model).__name__
        self.input_transform: nn.Module = nn.Identity()
        modules = dict(model.named_modules())
        self._stage_index: dict[int, int] = {}
        for index, path in enumerate(self.spec.stages):
            if path not in modules or path == "":
                raise LakdError(f"model '{self.arch_name}' has no module '{path}' (stage {index} of the "
                                f"{self.spec.source} stage spec){did_you_mean(path, [m for m in modules if m])}; "
                                "stage paths are names from model.named_modules()")
            module = modules[path]
            if id(module) in self._stage_index:
                first = self.spec.stages[self._stage_index[id(module)]]
                raise LakdError(f"model '{self.arch_name}': stage paths '{first}' and '{path}' are the same module")
            self._stage_index[id(module)] = index
        self._stage_modules = [modules[path] for path in self.spec.stages]
        self._run: _Run | None = None

    @property
    def num_stages(self) -> int:
        return len(self.spec.stages)

    def prepend_input_transform(self, transform: nn.Module) -> None:
        self.input_transform = transform

    # -- hooks ---------------------------------------------------------------------------------------------
    def _make_hook(self, index: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            assert self._run is not None
            return self._run.stage_done(index, output)

        return hook

    def _as_map(self, index: int, output: Any, image: tuple[int, int]) -> torch.Tensor:
        """Stage ``index``'s output as a (B, C, H, W) map (a view: gradients flow back to the output)."""
        path = self.spec.stages[index]
        if not isinstance(output, torch.Tensor):
            raise LakdError(f"model '{self.arch_name}': stage '{path}' returned a {type(output).__name__}, not a "
                            "tensor; name a module whose output is one feature map (or token tensor)")
        layout = self.spec.layout
        if layout == "tokens":
            if output.dim() != 3:
                raise LakdError(f"model '{self.arch_name}': stage '{path}' returned shape {tuple(output.shape)}; "
                                "layout 'tokens' expects (batch, tokens, channels)")
            p = self.spec.patch_size or 1
            gh, gw = image[0] // p, image[1] // p
            patches = output[:, self.spec.prefix_tokens:]
            if patches.shape[1] != gh * gw:
                raise LakdError(f"model '{self.arch_name}': stage '{path}' has {patches.shape[1]} patch tokens "
                                f"after {self.spec.prefix_tokens} prefix token(s), but a {image[0]}x{image[1]} "
                                f"input with patch size {p} makes a {gh}x{gw} grid; fix prefix_tokens/patch_size")
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], gh, gw)
        if output.dim() != 4:
            raise LakdError(f"model '{self.arch_name}': stage '{path}' returned shape {tuple(output.shape)}, not a "
                            f"(batch, channels, height, width) map; give layout 'tokens' for token models")
        return output.permute(0, 3, 1, 2) if layout == "nhwc" else output

    def _from_map(self, feat: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """A (B, C, H, W) map in the layout of the stage ``output`` it replaces (tokens: after the stage's own
        prefix tokens, detached), in the output's dtype."""
        feat = feat.to(output.dtype)
        if self.spec.layout == "tokens":
            prefix = output[:, :self.spec.prefix_tokens].detach()
            return torch.cat([prefix, feat.flatten(2).transpose(1, 2)], dim=1)
        return feat.permute(0, 2, 3, 1) if self.spec.layout == "nhwc" else feat

    # -- forwards ------------------------------------------------------------------------------------------
    def forward_cut(self, x: torch.Tensor, on_stage: StageCallback | None = None,
                    cut: Callable[[int], bool] | None = None,
                    substitute: Callable[[int], torch.Tensor | None] | None = None) -> torch.Tensor:
        """Logits of the model's own forward; after stage i, ``on_stage(i, map, map)``; then, if ``substitute(i)``
        gives a (B, C, H, W) map, the forward goes on from it (in the stage's own layout) wherever the stage's
        output is used, else, if ``cut(i)``, the stage's output continues detached (no gradient flows back)."""
        if self._run is not None:
            raise LakdError(f"model '{self.arch_name}' is already running a hooked forward (re-entrant call)")
        self._run = _Run(self, tuple(x.shape[-2:]), on_stage, cut, substitute)
        # Hooks live only for this forward: the user's model is left as it was, and copies of it carry none.
        handles = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(self._stage_modules)]
        try:
            out = self.model(self.input_transform(x))
            self._run.check_complete()
        finally:
            self._run = None
            for handle in handles:
                handle.remove()
        return self._logits_of(out)

    def _logits_of(self, out: Any) -> torch.Tensor:
        """The logits in the forward's output: the tensor itself, or where the spec's ``logits`` says."""
        key = self.spec.logits
        if key is not None:
            try:
                out = out[key] if isinstance(out, dict | tuple | list) else getattr(out, str(key))
            except (KeyError, IndexError, AttributeError, TypeError):
                raise LakdError(f"model '{self.arch_name}': its forward's {type(out).__name__} has no {key!r} "
                                "(the stage spec's logits)") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            what = f"a {type(out).__name__}" if not isinstance(out, torch.Tensor) else f"shape {tuple(out.shape)}"
            has = isinstance(out, dict) and "logits" in out or not isinstance(out, torch.Tensor) and \
                hasattr(out, "logits")
            hint = ("name them in the stage spec: StageSpec(stages, logits='logits')" if has else
                    "name them in the stage spec (StageSpec(stages, logits=<key, attribute or position>)) or wrap "
                    "the model so that its forward returns the logits tensor")
            raise LakdError(f"model '{self.arch_name}': forward returned {what}, not logits (batch, classes); {hint}")
        return out

    def forward(self, x: torch.Tensor, preact: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, feats)``; ``preact`` gives the same features (hooked stages have no separate pre-activation)."""
        feats: list[torch.Tensor] = []
        logits = self.forward_cut(x, lambda _i, feat, _pre: feats.append(feat))
        return logits, feats


class _Run:
    """One hooked forward: checks the stages run once each, in order, and applies the callbacks."""

    def __init__(self, model: HookedModel, image: tuple[int, int], on_stage: StageCallback | None,
                 cut: Callable[[int], bool] | None, substitute: Callable[[int], torch.Tensor | None] | None) -> None:
        self.model, self.image, self.on_stage, self.cut, self.substitute = model, image, on_stage, cut, substitute
        self.next_index = 0

    def stage_done(self, index: int, output: Any) -> Any:
        spec, name = self.model.spec, self.model.arch_name
        if index != self.next_index:
            ran = (f"'{spec.stages[index]}' ran before '{spec.stages[self.next_index]}'" if index > self.next_index
                   else f"'{spec.stages[index]}' ran twice")
            raise LakdError(f"model '{name}': the stages of the {spec.source} stage spec do not follow each other in "
                            f"the forward ({ran}); list stage paths in the order the forward runs them, once each")
        self.next_index += 1
        feat = self.model._as_map(index, output, self.image)
        if self.on_stage is not None:
            self.on_stage(index, feat, feat)
        replacement = self.substitute(index) if self.substitute is not None else None
        if replacement is not None:
            if tuple(replacement.shape) != tuple(feat.shape):
                raise LakdError(f"model '{self.model.arch_name}': stage '{spec.stages[index]}' is replaced by a map of "
                                f"shape {tuple(replacement.shape)}, but its own output reads as {tuple(feat.shape)}")
            return self.model._from_map(replacement, output)
        if self.cut is not None and self.cut(index):
            return output.detach()
        return None

    def check_complete(self) -> None:
        if self.next_index != len(self.model.spec.stages):
            missing = self.model.spec.stages[self.next_index]
            raise LakdError(f"model '{self.model.arch_name}': stage '{missing}' of the {self.model.spec.source} stage "
                            "spec never ran in the forward; name modules the forward actually calls")


def user_model(model: nn.Module) -> nn.Module:
    """The model as its user knows it: a hooked model's wrapped module (its own keys, forward, export), else
    ``model`` itself."""
    return model.model if isinstance(model, HookedModel) else model


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def check_gradient_isolation(model: StagedModel, input_shape: tuple[int, int, int]) -> None:
    """A clear error when cutting every stage boundary still lets a gradient reach an earlier module.

    A cut stage output is detached wherever the forward uses it, skips included; but a tensor from *inside* an
    earlier module (the stem's output, a dense block's inner feature) that a later stage also takes would carry
    the last module's gradient back: LAKD's local modules would then not be independent. One small
    forward/backward in eval mode: every layer that finished before the last cut must get no gradient.
    """
    if model.runs_stage_by_stage:
        return  # the zoo runs stage by stage: isolation holds by construction (and is tested)
    assert isinstance(model, HookedModel)
    last = model.num_stages - 1
    param = next(model.parameters())
    numel = 2 * input_shape[0] * input_shape[1] * input_shape[2]  # a fixed input: no random numbers are drawn
    x = torch.linspace(-1.0, 1.0, numel, device=param.device, dtype=param.dtype).reshape(2, *input_shape)
    finished: list[str] = []  # layers with parameters, in the order their forwards finished
    boundary: list[int] = []  # len(finished) when the last cut stage finished
    layers = [(name, m) for name, m in model.model.named_modules() if any(True for _ in m.parameters(False))]
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: finished.append(name)) for name, m in layers]
    cut_stage = model._stage_modules[last - 1] if last > 0 else None
    if cut_stage is not None:
        handles.append(cut_stage.register_forward_hook(lambda *_: boundary.append(len(finished))))
    try:
        with _eval_mode(model), torch.enable_grad():
            model.zero_grad(set_to_none=True)
            model.forward_cut(x, cut=lambda i: i < last).float().sum().backward()
        early = set(finished[:boundary[0]]) if boundary else set()
        modules = dict(layers)
        for name in [n for n in finished if n in early]:
            for pname, p in modules[name].named_parameters(recurse=False):
                if p.grad is not None and bool(p.grad.abs().sum() > 0):
                    where = f"{name}.{pname}" if name else pname
                    raise LakdError(
                        f"model '{model.arch_name}': with every stage boundary cut, the logits still send a gradient "
                        f"to '{where}', which runs before stage '{model.spec.stages[last - 1]}' ends: a tensor from "
                        "inside an earlier module (not its stage output) reaches a later stage, so local modules "
                        "would not be independent; choose stage paths whose outputs are all that passes on")
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
