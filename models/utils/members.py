"""What a model needs to train K stacked runs at once (``--member``): each member's draws, memory, losses, rate.

A stacked model runs one network (``models/utils/stacking.py``) on tensors whose first dimension is the member. To
stay the same run as alone, each member draws every random number from its own generator in the order its run
alone would (epoch order, augmentation, buffer draws and insertions), keeps its own replay buffer, reduces its own
losses, and steps with its own learning rate; the hyper-parameters a member may change (its seed, its norm's and
model's options, its learning rate) reach the model's code as ``[K]`` tensors, so the 15-50 lines of a model serve
both.
"""

from __future__ import annotations

import copy
from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from utils.buffer import Buffer
from utils.core.options import Option


@dataclass
class Members:
    """The K runs of a stack: each member's resolved arguments and random generator (on the training device)."""

    args: list[Namespace]
    generators: list[torch.Generator]

    @property
    def count(self) -> int:
        return len(self.args)

    def model_args(self, options: Sequence[Option], device: torch.device, dtype: torch.dtype) -> Namespace:
        """The model's view of the arguments: shared values, and each model option as a ``[K]`` tensor of the
        losses' dtype (a scalar times a loss, as alone)."""
        args = copy.copy(self.args[0])
        for option in options:
            values = [getattr(member, option.dest) for member in self.args]
            setattr(args, option.dest, torch.tensor(values, dtype=dtype, device=device))
        return args

    def buffer(self, size: int, device: torch.device, mode: str, n_tasks: int) -> StackedBuffer:
        return StackedBuffer([Buffer(size, device, mode, n_tasks, generator) for generator in self.generators])

    def transform(self, transform: Callable[..., Tensor]) -> MemberTransforms:
        return MemberTransforms(transform, self.generators)


class MemberTransforms:
    """A training transform applied to each member's images ``[K, N, ...]`` with the member's generator."""

    def __init__(self, transform: Callable[..., Tensor], generators: Sequence[torch.Generator]) -> None:
        self.transform, self.generators = transform, list(generators)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.stack([self.transform(x[k], generator=g) for k, g in enumerate(self.generators)])


class StackedBuffer:
    """One replay buffer per member, read and written together; tensors carry the member as their first dimension."""

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.buffers = list(buffers)

    def __len__(self) -> int:
        return len(self.buffers[0])  # the members fill in lockstep

    def is_empty(self) -> bool:
        return self.buffers[0].is_empty()

    def get_data(self, size: int, transform: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, ...]:
        """Each member's draw (its own generator), then the transform of all of them: ``[K, n, ...]`` tensors."""
        draws = [buffer.get_data(size) for buffer in self.buffers]
        data = [torch.stack(column) for column in zip(*draws, strict=True)]
        if transform is not None:
            data[0] = transform(data[0])
        return tuple(data)

    def add_data(
        self,
        examples: Tensor,
        labels: Tensor | None = None,
        logits: Tensor | None = None,
        task_labels: Tensor | None = None,
        task: int | None = None,
    ) -> None:
        columns = [examples, labels, logits, task_labels]
        for k, buffer in enumerate(self.buffers):
            buffer.add_data(*(None if column is None else column[k] for column in columns), task=task)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [buffer.state_dict() for buffer in self.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for buffer, saved in zip(self.buffers, state["members"], strict=True):
            buffer.load_state_dict(saved)


def per_member_loss(loss: Callable[..., Tensor], members: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss`` of each member, ``[K, B, ...]`` -> ``[K]``: one call per member, its own arithmetic alone."""
    return lambda outputs, targets: torch.stack([loss(outputs[k], targets[k]) for k in range(members)])


class StackedSGD(torch.optim.Optimizer):
    """SGD (weight decay, momentum, Nesterov: torch's formulas) with each member's learning rate on its blocks.

    ``member_index(p)`` gives the member of each block of a parameter's first dimension (``StackedNet``). A member
    that ``stop``s keeps its parameters from then on, so a diverged member cannot spread NaN into its own state.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        lrs: Sequence[float],
        member_index: Callable[[Tensor], Tensor],
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(list(params), {"momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})
        lr = torch.tensor(list(lrs), dtype=torch.float64)
        self._index = {p: member_index(p) for group in self.param_groups for p in group["params"]}
        self._neg_lr = {p: (-lr).to(device=p.device, dtype=p.dtype)[index] for p, index in self._index.items()}
        self._keep: dict[Tensor, Tensor] | None = None  # None: every member trains
        self._active = torch.ones(len(lrs), dtype=torch.bool)

    def stop(self, member: int) -> None:
        """Freeze ``member``'s parameters (its run ended, e.g. on a non-finite loss)."""
        self._active[member] = False
        self._keep = {p: self._active.to(p.device)[index] for p, index in self._index.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d_p.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                    buf = state["momentum_buffer"]
                    d_p = d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                stepped = torch.addcmul(p, d_p, self._neg_lr[p])  # p - lr * d_p, rounded as torch's SGD rounds it
                p.copy_(stepped if self._keep is None else torch.where(self._keep[p], stepped, p))
