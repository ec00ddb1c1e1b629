"""CIFAR MobileNetV2 of the CRD / RepDistiller benchmark (their ``mobile_half``: width 0.5, expansion T=6).

Differences from the ImageNet MobileNetV2, kept because the benchmark numbers depend on them: the stem conv has
stride 2 but the second block group has stride 1 (so 32x32 -> 16x16 -> 8 -> 4 -> 2), every inverted residual has
its 1x1 expansion conv (even at t=1), activations are plain ReLU and the last conv has 1280 channels whatever the
width (for width <= 1).

Stages, for a 32x32 input (RepDistiller's f1..f4, with the final 1x1 conv folded into the last stage so that the
last feature is what the head pools)::

    stem:    conv3x3/2-BN-ReLU                          -> 16   x 16 x 16
    stage 0: block groups 0-1 (c = 8, 12)                          -> 12   x 16 x 16
    stage 1: block group 2    (c = 16, stride 2)                   -> 16   x  8 x  8
    stage 2: block groups 3-4 (c = 32, 48; stride 2)               -> 48   x  4 x  4
    stage 3: block groups 5-6 (c = 80, 160; stride 2) + conv1x1-BN-ReLU -> 1280 x 2 x 2

Stages 0-2 end in a linear bottleneck (no ReLU), so their ``preact`` equals their output; the last stage's
``preact`` is the final BN output before its ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model
from lakd.models.resnet_cifar import init_conv_bn

# (expansion, channels at width 1, blocks, stride of the first block); expansion None = the model's T.
_BLOCK_GROUPS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Which block groups make up each stage.
_STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear); residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(StagedModel):
    """CIFAR MobileNetV2: stem + four stages (see module docstring) + pool/linear head."""

    def __init__(self, num_classes: int, width_mult: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        in_channels = int(32 * width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(3, in_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        groups: list[nn.Sequential] = []
        for group_expansion, channels, num_blocks, first_stride in _BLOCK_GROUPS:
            out_channels = int(channels * width_mult)
            t = expansion if group_expansion is None else group_expansion
            blocks = []
            for position in range(num_blocks):
                stride = first_stride if position == 0 else 1
                blocks.append(InvertedResidual(in_channels, out_channels, stride, t))
                in_channels = out_channels
            groups.append(nn.Sequential(*blocks))
        stages = [nn.Sequential(*(groups[g] for g in group_ids)) for group_ids in _STAGE_GROUPS]
        last_channels = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        # Final 1x1 conv: its ReLU is not in-place so the BN output survives as the last stage's preact.
        stages[-1].append(nn.Conv2d(in_channels, last_channels, 1, bias=False))
        stages[-1].append(nn.BatchNorm2d(last_channels))
        stages[-1].append(nn.ReLU(inplace=False))
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(last_channels, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.head.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.fc.bias)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


@register_model()
def mobilenetv2(num_classes: int = 100, width_mult: float = 0.5, expansion: int = 6) -> MobileNetV2:
    """The benchmark's ``MobileNetV2`` student (``mobile_half``): width 0.5, T=6."""
    return MobileNetV2(num_classes, width_mult, expansion)
