"""The batch order of in-memory tensors, shared by the training loop and the joint model's offline training.

An epoch draws one permutation of the sample indices (``torch.randperm`` on the device); batch ``b`` is its slice
``[b * batch_size, (b + 1) * batch_size)``, the last one possibly short. The trainer keeps the permutation in its
resume state, so a resumed run cuts the same batches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def epoch_order(n: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
    """A new epoch's permutation of the sample indices ``0 .. n-1``, drawn on the device (from ``generator``, a
    run's member's own; torch's global one by default)."""
    return torch.randperm(n, device=device, generator=generator)


def epoch_batches(
    n: int, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
) -> list[Tensor]:
    """The sample indices of every batch of a new epoch (a helper for loops that need not resume mid-epoch)."""
    order = epoch_order(n, device, generator)
    return [batch_indices(order, b, batch_size) for b in range(n_batches(n, batch_size))]


def n_batches(n: int, batch_size: int) -> int:
    """Batches in an epoch of ``n`` samples (the last one may be short)."""
    return math.ceil(n / batch_size)


def batch_indices(order: Tensor, batch: int, batch_size: int) -> Tensor:
    """The sample indices of batch ``batch`` of an epoch whose permutation is ``order`` (``[..., n]``: a stack's
    members' permutations give each member's batch)."""
    return order[..., batch * batch_size :][..., :batch_size]
