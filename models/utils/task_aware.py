"""The protocol between the training loop and task-aware normalisation layers: every hook the loop calls.

A norm layer that wants each sample's task (AdaB²N) implements :class:`TaskAwareNorm`; ``ContinualModel`` is its
only caller (task ids and the regulariser with its weight around each forward in ``forward_parts``, the weighted sum
in ``step``, task boundaries in ``meta_end_task``), so models, the trainer and the buffer never know which norm is in
use. The model owns the task index: the layers are told of every completed task and are handed the current one when
asked for their regulariser's weight. A layer whose running statistics describe a transform of its
input (CN) says so through :class:`StatisticsInput`, which the recency-bias diagnostics use.

Outside this framework (e.g. in another library's training loop), the same calls are::

    counts = task_counts(task_ids, num_tasks)
    for layer in task_aware_layers(net):
        layer.set_batch_tasks(task_ids, counts)          # before each training forward
    out = net(x)
    layers = task_aware_layers(net)
    loss = criterion(out, y) + sum(layer.norm_loss_weight(task) * layer.norm_loss for layer in layers)
    ...
    for layer in task_aware_layers(net):
        layer.end_task()                                 # at each task boundary
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class TaskAwareNorm(Protocol):
    """A norm layer whose training statistics depend on each sample's task, with an optional regulariser."""

    prefers_joint_forward: ClassVar[bool]
    """Whether the reference normalises stream and replay samples in one joint forward (the default mode)."""

    norm_loss: Tensor | None
    """After a training forward, that forward's differentiable regulariser (``None``: none)."""

    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None) -> None:
        """Task index of every sample of the next training forward (at most the current task: a task the layer has
        not reached yet takes no part); ``counts = task_counts(task_ids, num_tasks)``."""
        ...

    def norm_loss_weight(self, task: int) -> float:
        """The weight of ``norm_loss`` in the loss while training task ``task`` (0: leave it out)."""
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


def task_counts(task_ids: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Samples of each task ``0 .. n-1`` in a batch, as floats; an ``index_add`` (``bincount`` would sync a GPU).

    Task ids ``[K, N]`` (a stack's members) give each member's counts, ``[K, n]``.
    """
    ones = torch.ones_like(task_ids, dtype=dtype)
    if task_ids.dim() == 2:
        return torch.zeros(task_ids.shape[0], n, dtype=dtype, device=task_ids.device).scatter_add(1, task_ids, ones)
    return torch.zeros(n, dtype=dtype, device=task_ids.device).index_add(0, task_ids, ones)
