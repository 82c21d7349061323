"""The protocol between the training loop and task-aware normalisation layers: every hook the loop calls.

A norm layer that wants each sample's task (AdaB²N) or the batch's split into stream and replayed samples (TBBN)
implements :class:`TaskAwareNorm`; ``ContinualModel`` is its only caller (task ids, the stream's size and the
regulariser with its weight around each forward in ``forward_parts``, the weighted sum in ``step``, task boundaries
in ``meta_end_task``), so models, the trainer and the buffer never know which norm is in use. The model owns the
task index: the layers are told of every completed task and are handed the current one when asked for their
regulariser's weight. A layer whose running statistics describe a transform of its input (CN) says so through
:class:`StatisticsInput`, which the recency-bias diagnostics use.

Outside this framework (e.g. in another library's training loop), the same calls are::

    counts = task_counts(task_ids, num_tasks)
    for layer in task_aware_layers(net):
        layer.set_batch_tasks(task_ids, counts, stream)  # before each training forward
    out = net(x)
    losses = NormLosses()
    losses.collect(task_aware_layers(net), task)         # each layer's regulariser with its weight
    loss = losses.add_to(criterion(out, y))              # criterion + Σ_weight weight · Σ norm_loss, [1]
    ...
    for layer in task_aware_layers(net):
        layer.end_task()                                 # at each task boundary

A layer holds K members side by side (a network of one run: K = 1; ``models/utils/stacking.py``): its task ids are
each member's (``[K, N]``), its regulariser ``[K]`` and its weight K floats, whatever K is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class TaskAwareNorm(Protocol):
    """A norm layer whose training statistics depend on each sample's task, with an optional regulariser."""

    prefers_joint_forward: ClassVar[bool]
    """Whether the reference normalises stream and replay samples in one joint forward (the default mode)."""

    norm_loss: Tensor | None
    """After a training forward, that forward's differentiable regulariser, each member's, ``[K]`` (``None``: none)."""

    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None, stream: int | None = None) -> None:
        """Task index of every sample of the next training forward (at most the current task: a task the layer has
        not reached yet takes no part); ``counts = task_counts(task_ids, num_tasks)``; ``stream``: how many leading
        samples of the batch are the stream batch, the rest being replayed (a Python int: no host sync). ``None``:
        the caller does not say, and the whole batch counts as the stream; a layer that needs the split (TBBN from its
        second task on) refuses a training forward then."""
        ...

    def norm_loss_weight(self, task: int) -> tuple[float, ...]:
        """Each member's weight of ``norm_loss`` in the loss while training task ``task`` (0: leave it out)."""
        ...

    def end_task(self) -> None:
        """One more task completed."""
        ...


@runtime_checkable
class StatisticsInput(Protocol):
    """A layer whose running statistics describe ``running_stats_input(x)`` rather than its input ``x``."""

    def running_stats_input(self, x: Tensor) -> Tensor: ...


def _members(protocol: type) -> list[str]:
    """A protocol's attributes and methods, as ``isinstance`` checks them (``typing.get_protocol_members``, 3.13)."""
    methods = [k for k, v in vars(protocol).items() if callable(v) and not k.startswith("_")]
    return [*protocol.__annotations__, *methods]


def task_aware_layers(module: nn.Module) -> list[TaskAwareNorm]:
    """The layers of ``module`` that take part in the protocol, in module order.

    A layer that asks for task ids (``set_batch_tasks``) but lacks another hook is an error, not silently left out.
    """
    layers = []
    for name, m in module.named_modules():
        if isinstance(m, TaskAwareNorm):
            layers.append(m)
        elif hasattr(m, "set_batch_tasks"):
            missing = ", ".join(k for k in _members(TaskAwareNorm) if not hasattr(m, k))
            raise TypeError(f"{name or type(m).__name__} has set_batch_tasks but not {missing} of TaskAwareNorm")
    return layers


class NormLosses:
    """The regularisers of the task-aware layers over the training forwards since the last backward, and their
    weighted sum: one collector for ``ContinualModel`` and the Avalanche plugin, so the two add the same terms in the
    same order, to the last bit.

    Each layer gives a ``[K]`` regulariser and K weights (each member's); the regularisers of equal weights are summed
    first, then multiplied by them (``Σ_weight weight · Σ norm_loss``, per distinct weights in order of appearance).
    """

    def __init__(self) -> None:
        self.terms: list[tuple[tuple[float, ...], Tensor]] = []
        self._weights: dict[tuple[tuple[float, ...], torch.dtype, torch.device], Tensor] = {}

    def collect(self, layers: Sequence[TaskAwareNorm], task: int) -> None:
        """After a training forward: each layer's ``norm_loss`` with its weights while training ``task``. The layer's
        attribute is cleared: the collector holds the graph node now (a layer holding one cannot be deep-copied)."""
        for layer in layers:
            if layer.norm_loss is not None:
                weight = layer.norm_loss_weight(task)
                if not isinstance(weight, tuple) or layer.norm_loss.shape != (len(weight),):
                    raise TypeError(
                        f"{type(layer).__name__} gives a regulariser of shape {tuple(layer.norm_loss.shape)} and the "
                        f"weights {weight!r}: TaskAwareNorm wants one of each per member, [K] and K floats"
                    )
                self.terms.append((weight, layer.norm_loss))
                layer.norm_loss = None

    def _weight(self, weight: tuple[float, ...], like: Tensor) -> Tensor:
        """``weight`` as a tensor like ``like``, made once (a step copies nothing to the device)."""
        key = (weight, like.dtype, like.device)
        if key not in self._weights:
            self._weights[key] = like.new_tensor(weight)
        return self._weights[key]

    def total(self) -> Tensor | None:
        """``Σ_weight weight · Σ norm_loss``, ``[K]`` (``None``: nothing, or only weights of 0)."""
        by_weight: dict[tuple[float, ...], list[Tensor]] = {}
        for weight, norm_loss in self.terms:
            if any(weight):
                by_weight.setdefault(weight, []).append(norm_loss)
        sums = [self._weight(w, losses[0]) * torch.stack(losses, 1).sum(1) for w, losses in by_weight.items()]
        return sum(sums[1:], sums[0]) if sums else None

    def add_to(self, loss: Tensor) -> Tensor:
        """``loss`` plus :meth:`total`; the terms are spent."""
        total, self.terms = self.total(), []
        return loss if total is None else loss + total

    def clear(self) -> None:
        """Drop the terms (a step that leaves the regulariser out)."""
        self.terms = []


def task_counts(task_ids: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Samples of each task ``0 .. n-1`` in each member's batch, as floats: ``[K, N]`` task ids give ``[K, n]`` (a
    scatter-add along the samples; ``bincount`` would sync a GPU)."""
    ones = torch.ones_like(task_ids, dtype=dtype)
    zeros = torch.zeros(*task_ids.shape[:-1], n, dtype=dtype, device=task_ids.device)
    return zeros.scatter_add(-1, task_ids, ones)
