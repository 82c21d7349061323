"""Continual-learning metrics on an accuracy matrix.

``acc[i][j]`` is the accuracy (percent) on task ``j`` after training task
``i``; entries that were not measured are ``None``. The superdiagonal
``acc[j-1][j]`` (task ``j`` just before it is trained) is what forward
transfer needs, as in mammoth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float | None]]


def _array(acc: Matrix) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in acc], dtype=float)


def average_accuracy(acc: Matrix) -> float:
    """Mean accuracy over the tasks seen so far, after the last trained task."""
    a = _array(acc)
    t = len(a) - 1
    return float(np.mean(a[t, : t + 1]))


def forgetting(acc: Matrix) -> float | None:
    """Mean over tasks j < T-1 of (best accuracy on j after training it) - (final accuracy on j).

    The best is taken over rows ``j <= i <= T-1``: as in mammoth the final row
    is included, so forgetting is never negative; unlike mammoth, the
    pre-training superdiagonal entry is not. ``None`` with a single task.
    """
    a = _array(acc)
    t = len(a) - 1
    if t < 1:
        return None
    return float(np.mean([np.nanmax(a[j : t + 1, j]) - a[t, j] for j in range(t)]))


def backward_transfer(acc: Matrix) -> float | None:
    """Mean over tasks j < T-1 of (final accuracy on j) - (accuracy on j right after training it)."""
    a = _array(acc)
    t = len(a) - 1
    if t < 1:
        return None
    return float(np.mean([a[t, j] - a[j, j] for j in range(t)]))


def forward_transfer(acc: Matrix, random_acc: Sequence[float] | None) -> float | None:
    """Mean over tasks j >= 1 of (accuracy on j before training it) - (a random network's accuracy on j)."""
    a = _array(acc)
    if random_acc is None or len(a) < 2 or np.isnan([a[j - 1, j] for j in range(1, len(a))]).any():
        return None
    return float(np.mean([a[j - 1, j] - random_acc[j] for j in range(1, len(a))]))
