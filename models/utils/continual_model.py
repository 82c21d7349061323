"""The base of every continual-learning method.

A model sees the stream one batch at a time through ``observe``. The trainer announces task boundaries through
the template methods ``meta_begin_task`` / ``meta_end_task``, which own the bookkeeping (the task index, which the
model alone keeps; the layers and the buffer are told of it) and call the subclass hooks ``begin_task`` /
``end_task``, so a subclass never calls ``super()`` for it. A model declares its own command-line flags in
``OPTIONS`` (``utils/core/options.py``). Shared places make every model work with every normalisation layer, through
the protocol of ``models/utils/task_aware.py``:

* ``forward_parts`` runs the stream batch (a model's first part) and the replayed
  batches through the network, either as *separate* forward passes (the reference
  baselines: BN's batch statistics come from each sub-batch alone) or as one *joint*
  concatenated pass (the reference AdaB²N and TBBN), and first hands each sample's
  task id and the stream's size to the task-aware layers;
* ``step`` adds the layers' weighted regularisers (``norm_loss``) to the method's
  loss before the backward pass;
* ``remember`` stores a stream batch in the buffer with the current task.

Every model trains K runs at once (``models/utils/members.py``; a run alone is K = 1): every tensor of a model's code
has the member as its first dimension (``[K, B, ...]``), ``self.args`` holds what the members share (reading a value
they differ in is refused, naming it) and each of the model's ``OPTIONS`` as a ``[K]`` tensor (each member's value,
in the losses' dtype: a scalar times a loss, as alone), every loss goes through ``self.loss`` / ``self.mse`` (one
reduction per member, ``[K]``), and each member has its own optimiser (``make_optimizer``). Written so, a model
declares ``STACKS = True`` and also trains stacked runs.
"""

from __future__ import annotations

import contextlib
from argparse import Namespace
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normcl.datasets.utils.continual_dataset import ContinualDataset, run_dtype
from normcl.models.utils.members import MemberOptimizers, Members, StackedBuffer, per_member_loss
from normcl.models.utils.stacking import StackedNet
from normcl.models.utils.task_aware import NormLosses, task_aware_layers, task_counts
from normcl.utils.core.options import Option

Part = tuple[Tensor, Tensor | int]


class ContinualModel(nn.Module):
    """A network, its optimiser, and the rules by which it learns from a stream."""

    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    """The model's own command-line flags, read back from ``self.args`` as ``[K]`` tensors."""
    COMPATIBILITY: ClassVar[tuple[str, ...]] = ("class-il",)
    USES_BUFFER: ClassVar[bool] = False
    STACKS: ClassVar[bool] = False
    """Whether the model trains K > 1 stacked runs (``--member``): true when its code follows the rules above (no
    member's value is read as one number, no loss reduces over members). A model that does not declare it runs
    alone only (a ``--member`` alone is that run) and is refused with more members."""
    REFERENCE_FORWARD: ClassVar[str] = "separate"
    NORM_LOSS_ONLY_WHEN_REPLAYING: ClassVar[bool] = False
    """Whether the norm regulariser joins the loss only in steps that replay, as in the reference code of the replay
    methods (``er_ace_ada.py``, ``derpp_ada.py``): their step without replay (ER-ACE's first task, DER++'s first
    step) is cross-entropy alone, whatever ``--ada_t0`` says."""

    def __init__(
        self, net: StackedNet, loss: Callable[..., Tensor], members: Members, dataset: ContinualDataset
    ) -> None:
        """``net``: the members' networks as one; ``members``: each run's arguments and generator; ``dataset``: the
        first member's (every member's tasks have the same sizes)."""
        super().__init__()
        self.net = net
        self.members = members
        self.dataset = dataset
        self.device = dataset.device
        self.dtype = run_dtype(members.shared())
        self.args = members.model_args(self.OPTIONS, self.device, self.dtype)
        self.loss = per_member_loss(loss, members.count)
        self._mse = per_member_loss(F.mse_loss, members.count)
        self.transform = members.transform(dataset.train_transform)
        self.n_classes = dataset.n_classes()
        self.current_task = 0
        self.forward_mode = resolve_forward_mode(self.args, type(self), net)
        self.amp = bool(getattr(self.args, "amp", False))
        self.buffer: StackedBuffer | None = None
        if self.USES_BUFFER:
            self.buffer = members.buffer(self.args.buffer_size, self.device, self.args.buffer_mode, dataset.N_TASKS)
        self._task_aware = task_aware_layers(net)
        self._norm_losses = NormLosses()
        self._replaying = False
        self._driven = False  # a forward_parts since the last step
        self.opt = self.get_optimizer()

    def get_optimizer(self) -> MemberOptimizers:
        """Each member's optimiser (``make_optimizer``) over its parameters; built after the norm swap so new
        parameters are trained too."""
        parameters = [self.net.member_parameters(k) for k in range(self.members.count)]
        optimizers = [self.make_optimizer(p, args.lr) for p, args in zip(parameters, self.members.args, strict=True)]
        return MemberOptimizers(self.net, parameters, optimizers)

    def make_optimizer(self, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
        """The optimiser of one member's parameters at its learning rate: SGD with the mammoth flags (a model may
        override it; it then serves stacked runs too)."""
        a = self.args
        return torch.optim.SGD(params, lr=lr, weight_decay=a.optim_wd, momentum=a.optim_mom, nesterov=a.optim_nesterov)

    def mse(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean squared error (DER's logit replay), each member's in a stack."""
        return self._mse(a, b)

    def forward(self, x: Tensor, net: nn.Module | None = None) -> Tensor:
        """The members' outputs ``[K, B, classes]`` on ``[K, B, ...]`` (``net`` instead: one member's network, from
        :meth:`member_net`, on ``[B, ...]``)."""
        net = self.net if net is None else net
        if x.dtype != self.dtype:  # --dtype float64: the inputs follow the network
            x = x.to(self.dtype)
        if self.net.channels_last and x.dim() == 4:  # the members' [K, B, C, H, W]: the StackedNet lays it out
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.amp:
            return net(x)
        with self.autocast():
            return net(x).float()

    def member_net(self, k: int) -> nn.Module:
        """Member ``k`` as the ordinary network it is alone, with its current state and mode, for reading (scoring,
        digests, diagnostics): kept between calls and refreshed, not built anew (``StackedNet.member(k, kept=True)``;
        a network of its own for one member too; not compiled, whatever ``--compile`` says). To train a copy:
        ``self.net.member(k)``."""
        return self.net.member(k, kept=True).train(self.net.training)

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast of the forward passes under ``--amp``; no context at all otherwise (any device)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def get_extra_state(self) -> dict[str, int]:
        """Python-side state that checkpoints must carry besides parameters and buffers."""
        return {"current_task": self.current_task}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.current_task = state["current_task"]

    def stream_tasks(self, labels: Tensor) -> Tensor:
        """The current task's id for every sample of a stream batch (what the buffer stores)."""
        return torch.full_like(labels, self.current_task)

    def _tasks_tensor(self, ids: Tensor | int, n: int) -> Tensor:
        if isinstance(ids, Tensor):
            return ids
        return torch.full((self.members.count, n), ids, dtype=torch.long, device=self.device)

    def _run(self, x: Tensor, task_ids: Tensor | None, stream: int) -> Tensor:
        """One training forward of ``x`` whose first ``stream`` samples (per member) are the stream batch."""
        counts = None if task_ids is None else task_counts(task_ids, self.dataset.N_TASKS)
        for layer in self._task_aware:
            layer.set_batch_tasks(task_ids, counts, stream)
        out = self(x)
        self._norm_losses.collect(self._task_aware, self.current_task)
        self._driven = True
        return out

    def forward_parts(self, parts: Sequence[Part]) -> list[Tensor]:
        """Outputs of the network on each (inputs, task ids) part, in ``self.forward_mode``.

        Task ids are an int (the whole part comes from one task, e.g. the
        stream) or a LongTensor with one id per sample (e.g. replay), ``[K, B]``.
        A model's first part is its stream batch, the others are replayed: the layers are told how many leading
        samples of each forward are the stream (joint: the first part's size; separate: the first part's forward is
        all stream, the others' none).
        """
        want_ids, dim = bool(self._task_aware), 1
        self._replaying = len(parts) > 1
        sizes = [x.shape[dim] for x, _ in parts]
        if self.forward_mode == "separate" or len(parts) == 1:
            return [
                self._run(x, self._tasks_tensor(t, n) if want_ids else None, n if i == 0 else 0)
                for i, ((x, t), n) in enumerate(zip(parts, sizes, strict=True))
            ]
        ids = torch.cat([self._tasks_tensor(t, x.shape[dim]) for x, t in parts], dim) if want_ids else None
        return list(self._run(torch.cat([x for x, _ in parts], dim), ids, sizes[0]).split(sizes, dim))

    def regularised(self, loss: Tensor) -> Tensor:
        """``loss`` plus ``weight · Σ norm_loss`` of the forwards since the last step, per weight the layers give
        (none in a step without replay when ``NORM_LOSS_ONLY_WHEN_REPLAYING``)."""
        if self._task_aware and not self._driven:
            raise RuntimeError(
                f"{type(self).__name__} trains a network with task-aware norm layers "
                f"({type(self._task_aware[0]).__name__}) without forward_parts: the layers get no task ids and their "
                "regulariser is lost; run the network through self.forward_parts([(inputs, task), ...])"
            )
        self._driven = False
        if self._replaying or not self.NORM_LOSS_ONLY_WHEN_REPLAYING:
            return self._norm_losses.add_to(loss)
        self._norm_losses.clear()
        return loss

    def step(self, loss: Tensor) -> Tensor:
        """Add the norm layers' regularisers, back-propagate and update; returns the total loss, detached."""
        loss = self.regularised(loss)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # the members' parameters are disjoint: each gets its own loss's gradient
        self.opt.step()
        return loss.detach()

    def remember(self, examples: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Offer a stream batch (un-augmented) to the buffer, with the current task's id for every sample."""
        assert self.buffer is not None
        self.buffer.add_data(
            examples, labels=labels, logits=logits, task_labels=self.stream_tasks(labels), task=self.current_task
        )

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        """Learn from one stream batch; returns the loss as a detached tensor (no host sync)."""
        raise NotImplementedError

    def begin_task(self, dataset: ContinualDataset) -> None:
        """Hook before the first batch of each task (``self.current_task`` is that task)."""

    def end_task(self, dataset: ContinualDataset) -> None:
        """Hook after the last batch of each task, before the bookkeeping moves to the next task."""

    def meta_begin_task(self, dataset: ContinualDataset) -> None:
        """The trainer's call before a task: the subclass hook (no bookkeeping is due yet)."""
        self.begin_task(dataset)

    def meta_end_task(self, dataset: ContinualDataset) -> None:
        """The trainer's call after a task: the subclass hook, then the layers are told, then the next task."""
        self.end_task(dataset)
        for layer in self._task_aware:
            layer.end_task()
        self.current_task += 1


def resolve_forward_mode(args: Namespace, model_cls: type[ContinualModel], net: nn.Module) -> str:
    """``--forward_mode``, or the reference's choice: joint for layers that ask for it, else the model's."""
    mode = getattr(args, "forward_mode", None)
    if mode:
        return mode
    if any(layer.prefers_joint_forward for layer in task_aware_layers(net)):
        return "joint"
    return model_cls.REFERENCE_FORWARD
