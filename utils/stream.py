"""Batching of in-memory tensors: a shuffled index per epoch, cut into batches on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def iterate_batches(n: int, batch_size: int, device: torch.device, shuffle: bool = True) -> Iterator[Tensor]:
    """Index tensors of consecutive batches over a permutation of ``range(n)`` (last batch may be short)."""
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    yield from order.split(batch_size)
