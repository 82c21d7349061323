"""Batched image augmentation on the training device.

The reference pipeline (torchvision ``RandomCrop(size, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``) runs per
sample in PIL. Here the same distribution is drawn for a whole uint8 batch at
once with tensor indexing: every sample gets its own crop offset and flip coin,
padding is zero (torchvision's default fill), and normalisation is one fused
multiply-add.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``padding`` and crop a random H x W window per sample."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, n, 1), device=x.device, generator=generator)
    rows = off[0] + torch.arange(h, device=x.device)  # (N, H)
    cols = off[1] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample of ``x`` horizontally with probability 1/2."""
    coin = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(coin[:, None, None, None], x.flip(-1), x)


class Normalize:
    """uint8 [0, 255] -> ``(x / 255 - mean) / std`` in ``dtype``, per channel, in one fused op.

    ``dtype`` is the network's (``--dtype``): a float64 run is float64 from the pixels on, so that no float32
    rounding, which differs between CPU kernel sets (fused multiply-add or not), enters it.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> None:
        self.mean = torch.tensor(mean, dtype=dtype)
        self.std = torch.tensor(std, dtype=dtype)
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _coeffs(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            scale = (1.0 / (255.0 * self.std)).to(device)[None, :, None, None]
            shift = (-self.mean / self.std).to(device)[None, :, None, None]
            self._cache[device] = (scale, shift)
        return self._cache[device]

    def __call__(self, x: Tensor) -> Tensor:
        scale, shift = self._coeffs(x.device)
        return torch.addcmul(shift, x.to(scale.dtype), scale)


class TrainTransform:
    """Random crop with padding, optional horizontal flip, then normalisation."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int,
        hflip: bool,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.normalize = Normalize(mean, std, dtype)
        self.padding = padding
        self.hflip = hflip

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = random_crop(x, self.padding, generator)
        if self.hflip:
            x = random_hflip(x, generator)
        return self.normalize(x)
