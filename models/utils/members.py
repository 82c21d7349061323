"""What a model needs to train K runs at once (``--member``; a run alone is K = 1): each member's draws, memory,
losses and optimiser.

A model runs one network (``models/utils/stacking.py``) on tensors whose first dimension is the member. To
stay the same run as alone, each member draws every random number from its own generator in the order its run
alone would (epoch order, augmentation, buffer draws and insertions), keeps its own replay buffer, reduces its own
losses, and steps with its own learning rate. A model sees the arguments its members share (:class:`SharedArgs`)
and each of its own options as a ``[K]`` tensor, so the 15-50 lines of a model serve both; a value the members
differ in (the seed, the learning rate, a norm's per-member option) is refused when a model reads it, never member
0's.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normcl.utils.buffer import Buffer
from normcl.utils.core.errors import UserError
from normcl.utils.core.options import Option


class SharedArgs(Namespace):
    """The arguments every member of a stack gives alike (a run alone: all of its own), as attributes. An argument
    the members differ in is not one value: reading it raises a one-line :class:`UserError` naming it and the fix,
    so that no code takes member 0's value for everyone's."""

    __slots__ = ("_differing",)

    def __init__(self, members: Sequence[Namespace]) -> None:
        values = [vars(member) for member in members]
        shared = {key: value for key, value in values[0].items() if all(v.get(key) == value for v in values)}
        super().__init__(**shared)
        self._differing = {key: [v.get(key) for v in values] for key in values[0] if key not in shared}

    def __getattr__(self, name: str) -> Any:  # only for what the namespace does not hold
        differing = object.__getattribute__(self, "_differing")
        if name in differing:
            shown = ", ".join(repr(value) for value in differing[name])
            raise UserError(
                f"the stacked members differ in --{name} ({shown}), which has one value only where they share it: "
                f"stack only runs with the same --{name}, or read each member's (self.members.args[k].{name})"
            )
        raise AttributeError(name)


@dataclass
class Members:
    """The K runs of a stack: each member's resolved arguments and random generator (on the training device)."""

    args: list[Namespace]
    generators: list[torch.Generator]

    @property
    def count(self) -> int:
        return len(self.args)

    def shared(self) -> SharedArgs:
        """What every member's arguments hold alike."""
        return SharedArgs(self.args)

    def model_args(self, options: Sequence[Option], device: torch.device, dtype: torch.dtype) -> SharedArgs:
        """The model's view of the arguments: the shared ones, and each model option as a ``[K]`` tensor of the
        losses' dtype (each member's value; a scalar times a loss, as alone)."""
        args = self.shared()
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


class MemberOptimizers:
    """One torch optimiser per member, over the member's parameters (``StackedNet.member_parameters``: blocks of the
    stacked parameters that share their storage), so each member steps
    with its own learning rate by torch's own code, and a model's ``make_optimizer`` serves alone and stacked.

    ``step`` hands each member its blocks of the stacked gradients first. A member that ``stop``s is not stepped
    again, so a diverged member cannot spread NaN into its own state.
    """

    def __init__(
        self, net: nn.Module, blocks: Sequence[Sequence[Tensor]], optimizers: Sequence[torch.optim.Optimizer]
    ) -> None:
        """``blocks[k]``: member k's parameters (``net.member_parameters(k)``) that ``optimizers[k]`` steps."""
        self.optimizers = list(optimizers)
        self._params = list(net.parameters())
        self._blocks = [list(b) for b in blocks]
        self._active = [True] * len(self.optimizers)

    def stop(self, member: int) -> None:
        """Freeze ``member``'s parameters (its run ended, e.g. on a non-finite loss)."""
        self._active[member] = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none)

    def step(self) -> None:
        members = len(self.optimizers)
        for k, (optimizer, blocks) in enumerate(zip(self.optimizers, self._blocks, strict=True)):
            if not self._active[k]:
                continue
            for p, block in zip(self._params, blocks, strict=True):
                block.grad = None if p.grad is None else p.grad.chunk(members)[k].reshape(block.shape)
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"members": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for optimizer, saved in zip(self.optimizers, state["members"], strict=True):
            optimizer.load_state_dict(saved)
