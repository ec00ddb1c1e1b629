"""CIFAR ResNets of the CRD / RepDistiller / mdistiller benchmark.

Depth ``6n + 2``: a conv3x3 stem, then three stages of ``n`` BasicBlocks at 32x32, 16x16 and 8x8 (for a 32x32
input). Where a block changes shape the shortcut is a strided 1x1 conv + BN ("option B"), as RepDistiller does;
that is what makes the parameter counts match the published tables (resnet56: 0.86M, resnet32x4: 7.43M at 100
classes).

* resnet8 ... resnet110: stem 16 channels, stages 16 / 32 / 64.
* resnet8x4, resnet32x4: stem 32 channels, stages 64 / 128 / 256 (so the first block of stage 0 has a projection
  shortcut too).
* resnet20_a ... resnet110_a: the original CIFAR ResNets of He et al. (2016), "option A" shortcuts (stride-2
  subsampling plus zero-padded channels, no parameters), as in akamaster/pytorch_resnet_cifar10, whose released
  weights load into them (``lakd train --init-weights ... model.init_key_map=akamaster``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; can also hand back the pre-ReLU sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (projection_shortcut(in_channels, out_channels, stride) if shortcut == "B"
                         else ZeroPadShortcut(in_channels, out_channels, stride))

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(relu(sum), sum)``; the sum is kept intact (the final ReLU is not in-place)."""
        out = self.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else strided 1x1 conv + BN (ResNet "option B")."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ZeroPadShortcut(nn.Module):
    """ResNet "option A": identity when the shape is kept, else strided subsampling and zero-padded channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x


def init_conv_bn(model: nn.Module) -> None:
    """He init (fan_out) for convs and unit/zero BN, the initialisation the benchmark teachers were trained with."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(StagedModel):
    """Stem (conv3x3-BN-ReLU) + three stages of BasicBlocks + pool/linear head."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, shortcut: str = "B") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got {shortcut!r}")
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {list(widths)}")
        blocks_per_stage = (depth - 2) // 6
        stem_width, *stage_widths = widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_channels = stem_width
        for index, width in enumerate(stage_widths):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, width, stride, shortcut)]
            blocks += [BasicBlock(width, width, 1, shortcut) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(in_channels, num_classes)
        init_conv_bn(self)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


_NARROW = (16, 16, 32, 64)
_WIDE_X4 = (32, 64, 128, 256)


@register_model()
def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


@register_model()
def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


@register_model()
def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


@register_model()
def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


@register_model()
def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


@register_model()
def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


@register_model()
def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


@register_model()
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _WIDE_X4, num_classes)


@register_model()
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _WIDE_X4, num_classes)


@register_model()
def resnet20_a(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes, shortcut="A")


@register_model()
def resnet32_a(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes, shortcut="A")


@register_model()
def resnet44_a(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes, shortcut="A")


@register_model()
def resnet56_a(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes, shortcut="A")


@register_model()
def resnet110_a(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes, shortcut="A")
