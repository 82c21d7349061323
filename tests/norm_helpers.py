"""Shared helpers of the normalisation-layer tests (``test_norm_layers.py``, ``test_convert_norm.py``, the stacking
tests)."""

from __future__ import annotations

import torch
from torch import nn


def randomised_bn(channels: int, affine: bool = True, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    """A BatchNorm with non-trivial running statistics and affine parameters."""
    bn = nn.BatchNorm2d(channels, momentum=momentum, affine=affine)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(3)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


class DoubledBN(nn.BatchNorm2d):
    """A BatchNorm subclass that computes something else, and declares no stacking of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def doubled_bn(bn: nn.BatchNorm2d) -> DoubledBN:
    """A norm builder whose layer class declares no stacking."""
    return DoubledBN(bn.num_features)
