"""ImageNet ResNet-18/34/50, architecturally identical to torchvision's (ResNet v1.5: in the bottleneck the stride
sits on the 3x3 conv), written from scratch; parameter counts at 1000 classes: 11.69M, 21.80M, 25.56M.

Stem: conv7x7/2-BN-ReLU-maxpool3x3/2. Four stages (64 / 128 / 256 / 512 base widths, x4 for bottlenecks) at
1/4, 1/8, 1/16 and 1/32 of the input resolution; ``preact`` is the pre-ReLU sum of each stage's last block.
State-dict keys differ from torchvision's (``stem`` / ``stages`` / ``head``), so its weights need a key remap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model
from lakd.models.resnet_cifar import BasicBlock, init_conv_bn, projection_shortcut


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1-BN, plus shortcut, then ReLU (width = out / 4)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        width = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(relu(sum), sum)``; the sum is kept intact (the final ReLU is not in-place)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class ImageNetResNet(StagedModel):
    """torchvision-style ResNet cut into stem + four stages + pool/linear head."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        expansion = 4 if block is Bottleneck else 1
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_channels = 64
        for index, (base_width, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            out_channels = base_width * expansion
            stride = 1 if index == 0 else 2
            blocks = [block(in_channels, out_channels, stride)]
            blocks += [block(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(in_channels, num_classes)
        init_conv_bn(self)
        if zero_init_residual:
            # Each block starts as the identity: helps large-batch training (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


@register_model(input_size=224)
def resnet18(num_classes: int = 1000, zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, zero_init_residual)


@register_model(input_size=224)
def resnet34(num_classes: int = 1000, zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, zero_init_residual)


@register_model(input_size=224)
def resnet50(num_classes: int = 1000, zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, zero_init_residual)
