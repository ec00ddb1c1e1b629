"""CIFAR ShuffleNetV1 / V2 of the CRD / RepDistiller benchmark (their ``ShuffleV1`` and ``ShuffleV2``).

Both keep the benchmark's CIFAR stems (no stride, no max-pool), so the three stages run at 16x16, 8x8 and 4x4 for
a 32x32 input.

* ``shufflenet_v1``: stem conv1x1(3->24)-BN-ReLU; stages of 4 / 8 / 4 grouped bottlenecks (groups 3) with
  240 / 480 / 960 output channels. The first block of a stage has stride 2 and concatenates a 3x3 avg-pooled
  shortcut, so its residual branch only produces ``out - in`` channels. Every block ends in ReLU; ``preact`` is
  the last block's pre-ReLU (concat or sum).
* ``shufflenet_v2`` (net size 1): stem conv3x3(3->24)-BN-ReLU; each stage is one down-sampling unit plus 3 / 7 /
  3 channel-split units, 116 / 232 / 464 channels; the final conv1x1(464->1024)-BN-ReLU is part of the last
  stage. ``preact`` of stages 0-1 is the last unit's output with its right branch taken before its ReLU; of the
  last stage, the final BN output before its ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups so the next grouped conv mixes information across them."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, plus identity (stride 1) or concat avg-pool (stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        mid_channels = out_channels // 4
        # The stem has only 24 channels: the first pointwise conv is not grouped there (as in ShuffleNet).
        self.first_groups = 1 if in_channels == 24 else groups
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, groups=mid_channels, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        preact = torch.cat([out, residual], 1) if self.stride == 2 else out + residual
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class ShuffleNetV1(StagedModel):
    """CIFAR ShuffleNetV1: stem + three stages of grouped bottlenecks + pool/linear head."""

    def __init__(
        self,
        num_classes: int,
        stage_channels: tuple[int, int, int] = (240, 480, 960),
        stage_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        in_channels = 24
        self.stem = nn.Sequential(
            nn.Conv2d(3, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        for out_channels, num_blocks in zip(stage_channels, stage_blocks, strict=True):
            # The stride-2 block concatenates its input, so its branch makes only the missing channels.
            blocks = [ShuffleV1Bottleneck(in_channels, out_channels - in_channels, 2, groups)]
            blocks += [ShuffleV1Bottleneck(out_channels, out_channels, 1, groups) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(in_channels, num_classes)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


class ShuffleV2DownUnit(nn.Module):
    """Stride-2 unit: two branches on the full input (dw3x3/2-pw and pw-dw3x3/2-pw), concatenated, shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, stride=2, padding=1, groups=mid_channels, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleV2SplitUnit(nn.Module):
    """Stride-1 unit: keep half the channels, transform the other half (pw-dw3x3-pw), concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kept_channels = channels // 2
        branch = channels - self.kept_channels
        self.branch = nn.Sequential(
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, padding=1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
        )

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, transformed = x[:, : self.kept_channels], x[:, self.kept_channels :]
        branch_preact = self.branch(transformed)
        out = channel_shuffle(torch.cat([kept, F.relu(branch_preact)], 1), 2)
        preact = channel_shuffle(torch.cat([kept, branch_preact], 1), 2)
        return out, preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x[:, : self.kept_channels], x[:, self.kept_channels :]
        return channel_shuffle(torch.cat([kept, F.relu(self.branch(transformed))], 1), 2)


class ShuffleNetV2(StagedModel):
    """CIFAR ShuffleNetV2 (net size 1): stem + three stages (the last one ends with conv1x1-BN-ReLU) + head."""

    def __init__(
        self,
        num_classes: int,
        stage_channels: tuple[int, int, int] = (116, 232, 464),
        stage_split_units: tuple[int, int, int] = (3, 7, 3),
        final_channels: int = 1024,
    ) -> None:
        super().__init__()
        in_channels = 24
        self.stem = nn.Sequential(
            nn.Conv2d(3, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        for out_channels, num_units in zip(stage_channels, stage_split_units, strict=True):
            units: list[nn.Module] = [ShuffleV2DownUnit(in_channels, out_channels)]
            units += [ShuffleV2SplitUnit(out_channels) for _ in range(num_units)]
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        # Final 1x1 conv: its ReLU is not in-place so the BN output survives as the last stage's preact.
        stages[-1].append(nn.Conv2d(in_channels, final_channels, 1, bias=False))
        stages[-1].append(nn.BatchNorm2d(final_channels))
        stages[-1].append(nn.ReLU(inplace=False))
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(final_channels, num_classes)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


@register_model()
def shufflenet_v1(num_classes: int = 100) -> ShuffleNetV1:
    """The benchmark's ``ShuffleV1``: groups 3, 240 / 480 / 960 channels, 4 / 8 / 4 blocks."""
    return ShuffleNetV1(num_classes)


@register_model()
def shufflenet_v2(num_classes: int = 100) -> ShuffleNetV2:
    """The benchmark's ``ShuffleV2`` (net size 1): 116 / 232 / 464 channels, 1024-channel final conv."""
    return ShuffleNetV2(num_classes)
