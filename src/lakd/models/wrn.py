"""Wide ResNets (WRN-d-k) of the CRD / RepDistiller benchmark.

Pre-activation wide blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut), ``(d - 4) / 6`` blocks per stage,
widths 16 (stem) and 16k / 32k / 64k (stages) at 32x32, 16x16, 8x8. Where the shape changes the shortcut is a
strided 1x1 conv applied to the *activated* input, as in the original WRN code.

Because the blocks are pre-activation, stage outputs 0 and 1 are raw residual sums (no ReLU: their ``preact``
feature is the same tensor). The network's final BN + ReLU belongs to the last stage, so the last stage's
feature is what the head pools and its ``preact`` is the BN output before that ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model
from lakd.models.resnet_cifar import init_conv_bn


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + residual


class WideResNet(StagedModel):
    """Stem conv3x3 (16 ch) + three stages of wide blocks; the final BN-ReLU closes the last stage."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        stages = []
        in_channels = 16
        for index, base_width in enumerate((16, 32, 64)):
            width = base_width * widen_factor
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = [WideBasicBlock(in_channels, width, stride, drop_rate)]
            blocks += [WideBasicBlock(width, width, 1, drop_rate) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        # Final BN + ReLU: not in-place, so the BN output survives as the last stage's preact feature.
        stages[-1].append(nn.BatchNorm2d(in_channels))
        stages[-1].append(nn.ReLU(inplace=False))
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(in_channels, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.head.fc.bias)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


@register_model()
def wrn_16_1(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, 1, num_classes, drop_rate)


@register_model()
def wrn_16_2(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, 2, num_classes, drop_rate)


@register_model()
def wrn_40_1(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, 1, num_classes, drop_rate)


@register_model()
def wrn_40_2(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, 2, num_classes, drop_rate)
