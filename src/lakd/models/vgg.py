"""CIFAR VGGs with BatchNorm, as in the CRD / RepDistiller benchmark (vgg8 = their ``vgg8_bn``, etc.).

Every conv is conv3x3 (with bias, as in the benchmark) + BN + ReLU. The five conv groups of the config tables
are the five stages::

    stage 0:           group 0   -> 64  x 32 x 32   (for a 32x32 input)
    stage 1: maxpool + group 1   -> 128 x 16 x 16
    stage 2: maxpool + group 2   -> 256 x  8 x  8
    stage 3: maxpool + group 3   -> 512 x  4 x  4
    stage 4:           group 4   -> 512 x  4 x  4

so a stage's feature is taken before the pool that follows it (RepDistiller's f0..f4), and its ``preact`` is the
output of its last BN before the ReLU. There is no pool between groups 3 and 4: for 32x32 inputs the benchmark
skips it (it only pools there for 64x64 inputs, which this zoo does not reproduce). The head is global average
pooling + a single ``Linear(512, num_classes)``.
"""

from __future__ import annotations

import torch
from torch import nn

from lakd.models.base import ClassifierHead, StagedModel, forward_stage_with_preact
from lakd.models.registry import register_model
from lakd.models.resnet_cifar import init_conv_bn

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}

# Stages that start with a 2x2 max-pool (the pool after the previous conv group).
_POOLED_STAGES = (1, 2, 3)


def conv_group(in_channels: int, widths: list[int], pool_first: bool) -> nn.Sequential:
    """(maxpool +) conv-BN-ReLU per width; the last ReLU is not in-place so its input survives as preact."""
    layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if pool_first else []
    for position, width in enumerate(widths):
        is_last = position == len(widths) - 1
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=not is_last),
        ]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(StagedModel):
    """Five conv-group stages (see module docstring) + pool/linear head."""

    def __init__(self, config: list[list[int]], num_classes: int) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"a VGG config has 5 conv groups, got {len(config)}")
        self.stem = nn.Identity()
        stages = []
        in_channels = 3
        for index, widths in enumerate(config):
            stages.append(conv_group(in_channels, widths, pool_first=index in _POOLED_STAGES))
            in_channels = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(in_channels, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.head.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.fc.bias)

    def _stage_forward(self, index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stage_with_preact(self.stages[index], h)


@register_model(local_modules=[[0, 1], [2], [3, 4]])
def vgg8(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg8"], num_classes)


@register_model(local_modules=[[0, 1], [2], [3, 4]])
def vgg11(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg11"], num_classes)


@register_model(local_modules=[[0, 1], [2], [3, 4]])
def vgg13(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg13"], num_classes)


@register_model(local_modules=[[0, 1], [2], [3, 4]])
def vgg16(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg16"], num_classes)


@register_model(local_modules=[[0, 1], [2], [3, 4]])
def vgg19(num_classes: int = 100) -> VGG:
    return VGG(VGG_CONFIGS["vgg19"], num_classes)
