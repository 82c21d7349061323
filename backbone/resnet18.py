"""ResNet-18 for small images, as in mammoth and the AdaB²N paper.

BasicBlock with layers [2, 2, 2, 2] and a 3x3, stride-1 stem (no max-pool), so
28x28 and 32x32 inputs keep their resolution in the first stage. ``nf`` sets
the width: 64 is the paper's full ResNet-18, 20 the "reduced ResNet-18" of
online continual learning. Every normalisation layer is an ``nn.BatchNorm2d``
built through ``norm_layer``, so ``--nl`` can swap them afterwards with
``normcl.models.utils.norms.convert_norm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normcl.backbone import BACKBONES

NormFactory = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), norm_layer(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@BACKBONES.register("resnet18")
class ResNet18(nn.Module):
    """ResNet-18 with ``nf`` base filters and a linear head over ``num_classes``."""

    def __init__(
        self, num_classes: int, nf: int = 64, in_channels: int = 3, norm_layer: NormFactory = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, nf)
        self.bn1 = norm_layer(nf)
        planes, layers = nf, []
        for i, width in enumerate((nf, 2 * nf, 4 * nf, 8 * nf)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(planes, width, stride, norm_layer), BasicBlock(width, width, 1, norm_layer)]
            planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.classifier = nn.Linear(8 * nf, num_classes)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
