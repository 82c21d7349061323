"""Continual-learning metrics on an accuracy matrix.

``acc[i][j]`` is the accuracy (percent) on task ``j`` after training task
``i``; entries that were not measured are ``None``. The superdiagonal
``acc[j-1][j]`` (task ``j`` just before it is trained) is what forward
transfer needs, as in mammoth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


Curve = Sequence[Mapping[str, Any]]
"""An anytime curve: points ``{"step", "task", "end", "class_il": [...], "task_il": [...]}`` in stream order, the
accuracy on every task seen so far (``0 .. task``) while training ``task``; ``end``: the point after its last step."""


def anytime_metrics(curve: Curve, n_tasks: int, setting: str = "class_il") -> dict[str, list[float | None]]:
    """AAA, min-ACC and WC-ACC after each task ``k`` (``None`` where the curve does not reach task ``k``'s end: the
    run stopped before).

    * ``aaa``: average anytime accuracy (Caccia et al., ICLR 2022): the mean over the points up to task ``k``'s end
      of the average accuracy on the tasks seen at that point.
    * ``min_acc`` (De Lange et al., ICLR 2023): the mean over the earlier tasks ``i < k`` of task ``i``'s lowest
      accuracy at the points after its training ended (during tasks ``i + 1 .. k``); ``None`` for ``k = 0``.
    * ``wc_acc``: worst-case accuracy, ``(1 / (k + 1)) · acc_k + (1 − 1 / (k + 1)) · min-ACC`` with ``acc_k`` task
      ``k``'s accuracy at its end (``k`` 0-based: ``k + 1`` tasks seen); for ``k = 0`` it is ``acc_0``.
    """
    out: dict[str, list[float | None]] = {"aaa": [], "min_acc": [], "wc_acc": []}
    ends = _task_ends(curve)
    for k in range(n_tasks):
        points = [p for p in curve if p["task"] <= k]
        if k not in ends:
            for name in out:
                out[name].append(None)
            continue
        end = ends[k]
        aaa = float(np.mean([np.mean(p[setting]) for p in points]))
        lows = [min(p[setting][i] for p in points if p["task"] > i) for i in range(k)]
        min_acc = float(np.mean(lows)) if lows else None
        current = float(end[setting][k])
        wc_acc = current if min_acc is None else current / (k + 1) + (1 - 1 / (k + 1)) * min_acc
        out["aaa"].append(aaa)
        out["min_acc"].append(min_acc)
        out["wc_acc"].append(wc_acc)
    return out


def _task_ends(curve: Curve) -> dict[int, Mapping[str, Any]]:
    """Each task's point at the end of its own training (the first, should a curve hold two)."""
    ends: dict[int, Mapping[str, Any]] = {}
    for p in curve:
        if p["end"]:
            ends.setdefault(p["task"], p)
    return ends


def end_accuracy(curve: Curve, setting: str = "class_il") -> float | None:
    """end-ACC: the mean over the earlier tasks ``i < k`` (``k``: the last task whose end the curve reaches) of task
    ``i``'s accuracy at the end of its own training, on the images min-ACC reads, at the point just before the ones
    it takes its minimum over. ``end-ACC − min-ACC`` is each task's deepest fall after its training: the stability
    gap (De Lange et al., ICLR 2023) and what forgetting lasts. ``None`` until a second task has ended, or where an
    earlier task's end is missing from the curve."""
    ends = _task_ends(curve)
    k = max(ends, default=0)
    if not k or any(i not in ends for i in range(k)):
        return None
    return float(np.mean([ends[i][setting][i] for i in range(k)]))
