"""How each kind of layer stacks: K members' layers as one layer whose channels hold the members side by side.

Stacking is declared on the layer's class, in the layer's own file, as
timm attaches metadata when a model registers: :func:`stackable` records a :class:`Stacking` for exactly that class
(a subclass declares its own: a ``BatchNorm2d`` subclass that computes something else must not be stacked as
BatchNorm). A norm stacks when the class its builder returns (``register_norm``) has a declaration;
``Stacking.per_member`` names the builder's keywords whose values may differ between members, which is all the
command line needs to know (``--member``, ``run.py --stack``). torch's own layers are declared at the end of this
file.

Most norms act on each channel alone, so K layers of C channels are one layer of K·C channels with the members'
per-channel parameters and buffers side by side: :func:`per_channel` declares such a layer in one line.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

L = TypeVar("L", bound=type[nn.Module])
SHARED_BUFFERS = frozenset({"num_batches_tracked", "tasks_completed"})
"""Buffers that every member has the same value of (the members train in lockstep). A layer's extra state
(``get_extra_state``: Python values its state dict carries, e.g. TBBN's task count) is shared likewise."""


def placement(module: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    """The device and dtype of ``module``'s first floating tensor (``None``: it has none)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None


def place_like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Move ``new`` to the device and floating dtype of ``old``'s first floating tensor (if it has one)."""
    where = placement(old)
    return new if where is None else new.to(device=where[0], dtype=where[1])


def own_tensors(layer: nn.Module) -> list[tuple[str, Tensor]]:
    """The layer's own parameters and buffers (not its children's), by name."""
    return [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]


def state_tensors(layer: nn.Module) -> list[tuple[str, Tensor]]:
    """The layer's own parameters and persistent buffers: its state (a non-persistent buffer is derived from its
    hyper-parameters and rebuilt with the layer)."""
    return [(name, t) for name, t in own_tensors(layer) if name not in layer._non_persistent_buffers_set]


def same(layers: Sequence[nn.Module], *names: str) -> None:
    """The members' layers must agree on every hyper-parameter that is not stacked."""
    for name in names:
        values = {repr(getattr(layer, name)) for layer in layers}
        if len(values) > 1:
            raise ValueError(f"cannot stack {type(layers[0]).__name__} layers whose {name} differ: {sorted(values)}")


def extra_state(layer: nn.Module) -> object | None:
    """The layer's own extra state (``get_extra_state``, which its state dict carries), or ``None``: it has none."""
    if type(layer).get_extra_state is nn.Module.get_extra_state:
        return None
    return layer.get_extra_state()


def load(new: nn.Module, layers: Sequence[nn.Module], shared: Sequence[str] = SHARED_BUFFERS) -> nn.Module:
    """Copy the members' parameters and buffers into ``new``, side by side; ``shared`` buffers and the extra state
    are equal and kept."""
    states = [extra_state(layer) for layer in layers]
    if any(state != states[0] for state in states):
        raise ValueError(f"cannot stack {type(layers[0]).__name__} layers whose extra state differ: {states}")
    if states[0] is not None:
        new.set_extra_state(copy.deepcopy(states[0]))
    with torch.no_grad():
        for name, target in state_tensors(new):
            sources = [getattr(layer, name) for layer in layers]
            if name in shared:
                if any(not torch.equal(s, sources[0]) for s in sources):
                    raise ValueError(f"cannot stack {type(layers[0]).__name__} layers whose {name} differ")
                target.copy_(sources[0])
            else:
                target.copy_(torch.cat([s.reshape(target.shape[0] // len(layers), *target.shape[1:]) for s in sources]))
    return new


def slice_member(stacked: nn.Module, k: int, template: nn.Module) -> nn.Module:
    """Member ``k`` of ``stacked`` as a copy of ``template`` with its state (:func:`load_member`)."""
    return load_member(stacked, k, copy.deepcopy(template))


def load_member(stacked: nn.Module, k: int, member: nn.Module) -> nn.Module:
    """Copy member ``k``'s state from ``stacked`` into ``member``, a layer of one member, in place: its block of
    every parameter and buffer (the inverse of :func:`load`: the members' blocks lie one after the other along the
    first dimension) and the shared extra state."""
    state = extra_state(stacked)
    if state is not None:
        member.set_extra_state(copy.deepcopy(state))
    with torch.no_grad():
        for name, target in state_tensors(member):
            source = getattr(stacked, name)
            if name not in SHARED_BUFFERS:
                source = source.reshape(source.numel() // target.numel(), -1)[k].view(target.shape)
            target.copy_(source)
    return member


def unchanged(stacked: nn.Module, k: int, member: nn.Module) -> nn.Module:
    """The ``refresh`` of a member layer with nothing to bring up to date (a stateless layer, or the live layer
    itself): it is left as it is."""
    return member


@dataclass(frozen=True)
class Stacking:
    """``stack(layers)``: one layer for K members' ``layers`` (their hyper-parameters checked); ``member(stacked, k,
    template)``: member k's layer back, a copy of ``template`` with its state; ``refresh(stacked, k, member)``: a
    layer that ``member`` built earlier brought to member k's current state in place (default
    :func:`load_member`); ``per_member``: the builder keywords (norm options) in which members may differ;
    ``scaled``: the attributes :func:`per_channel` multiplies by K."""

    stack: Callable[[Sequence[nn.Module]], nn.Module]
    member: Callable[[nn.Module, int, nn.Module], nn.Module]
    per_member: frozenset[str] = frozenset()
    scaled: tuple[str, ...] = ()
    refresh: Callable[[nn.Module, int, nn.Module], nn.Module] = load_member


STACKINGS: dict[type[nn.Module], Stacking] = {}


def stackable(stacking: Stacking) -> Callable[[L], L]:
    """Class decorator: declare how exactly this class stacks."""

    def declare(cls: L) -> L:
        if STACKINGS.setdefault(cls, stacking) is not stacking:
            raise TypeError(f"{cls.__name__} declares its stacking twice")
        return cls

    return declare


def stacking_of(layer_type: type[nn.Module]) -> Stacking | None:
    """The declared stacking of exactly ``layer_type`` (not of a base class), or ``None``."""
    return STACKINGS.get(layer_type)


class MemberState:
    """A layer whose tensors ``MEMBER_FIRST`` carry a leading member dimension (``[K, ...]``) that a layer without
    members lacks: its state dict, the boundary to checkpoints and to code that knows no stacks, writes a one-member
    layer's (a run alone's) without it and reads it either way, as ``torch.nn.modules.batchnorm`` reads old state in
    ``_load_from_state_dict``. In memory the member dimension is always there."""

    MEMBER_FIRST: ClassVar[tuple[str, ...]] = ()
    members: int

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if self.members == 1:
            for key in (prefix + name for name in self.MEMBER_FIRST if prefix + name in destination):
                destination[key] = destination[key][0]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.members == 1:
            for name in self.MEMBER_FIRST:
                saved, own = state_dict.get(prefix + name), getattr(self, name)
                if isinstance(saved, Tensor) and own is not None and saved.dim() == own.dim() - 1:
                    state_dict[prefix + name] = saved[None]
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]


def _hyper_parameters(layer: nn.Module) -> list[str]:
    """The public, non-tensor attributes of a layer: its hyper-parameters (``eps``, ``momentum``, ``groups``...)."""
    return [
        n for n, v in vars(layer).items() if not n.startswith("_") and n != "training" and not isinstance(v, Tensor)
    ]


def per_channel(*scaled: str, per_member: Sequence[str] = ()) -> Stacking:
    """The stacking of a layer that acts on each channel alone (BatchNorm and its kin, convolutions by group): K
    layers are one copy whose per-channel parameters and buffers hold the members side by side and whose ``scaled``
    attributes (channel and group counts; default ``num_features``) are multiplied by K; every public attribute must
    be equal across the members."""
    counts = scaled or ("num_features",)

    def stack(layers: Sequence[nn.Module]) -> nn.Module:
        same(layers, *_hyper_parameters(layers[0]))
        new = copy.deepcopy(layers[0])
        for name in counts:
            setattr(new, name, getattr(new, name) * len(layers))
        with torch.no_grad():
            for name, tensor in own_tensors(new):
                if name not in SHARED_BUFFERS:
                    grown = tensor.new_empty(len(layers) * tensor.shape[0], *tensor.shape[1:])
                    parameter = isinstance(tensor, nn.Parameter)
                    setattr(new, name, nn.Parameter(grown, tensor.requires_grad) if parameter else grown)
        return load(new, layers)

    return Stacking(stack, slice_member, frozenset(per_member), counts)


class StackedLayerNorm(nn.Module):
    """LayerNorm over each member's C×H×W block of a ``[N, K·C, H, W]`` input, with each member's affine.

    One ``layer_norm`` per member: the same kernel on the same sizes as the member alone (exact in float64).
    """

    def __init__(self, members: int, shape: Sequence[int], eps: float, affine: bool) -> None:
        super().__init__()
        self.members, self.shape, self.eps = members, tuple(shape), eps
        self.weight = nn.Parameter(torch.ones(members * shape[0], *shape[1:])) if affine else None
        self.bias = nn.Parameter(torch.zeros(members * shape[0], *shape[1:])) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        c = self.shape[0]
        blocks = [slice(k * c, (k + 1) * c) for k in range(self.members)]
        pick = lambda t, b: None if t is None else t[b]  # noqa: E731
        return torch.cat(
            [F.layer_norm(x[:, b], self.shape, pick(self.weight, b), pick(self.bias, b), self.eps) for b in blocks], 1
        )

    @classmethod
    def stack(cls, layers: Sequence[nn.LayerNorm]) -> StackedLayerNorm:
        ln = layers[0]
        same(layers, "normalized_shape", "eps", "elementwise_affine")
        new = cls(len(layers), ln.normalized_shape, ln.eps, ln.elementwise_affine)
        return load(place_like(new, ln), layers)


class StackedLinear(MemberState, nn.Module):
    """K linear heads: ``[N, K·F]`` features -> ``[N, K, classes]`` logits, one ``linear`` per member (exact); a run
    alone's state dict holds ``nn.Linear``'s shapes."""

    MEMBER_FIRST = ("weight", "bias")

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members = members
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        features = x.reshape(x.shape[0], self.members, -1)
        bias = [None] * self.members if self.bias is None else self.bias
        return torch.stack([F.linear(features[:, k], self.weight[k], bias[k]) for k in range(self.members)], 1)

    @classmethod
    def stack(cls, layers: Sequence[nn.Linear]) -> StackedLinear:
        lin = layers[0]
        same(layers, "in_features", "out_features")
        return load(place_like(cls(len(layers), lin.in_features, lin.out_features, lin.bias is not None), lin), layers)


def _keep(layers: Sequence[nn.Module]) -> nn.Module:
    same(layers, *_hyper_parameters(layers[0]))
    return copy.deepcopy(layers[0])


KEEP = Stacking(_keep, lambda stacked, k, template: copy.deepcopy(template), refresh=unchanged)
"""The stacking of a layer without state that acts on each channel (or element) alone and draws no random number:
the stack keeps it as it is (activations, pooling). Not dropout: its masks would come from one generator."""

# torch's own layers, by exact type.
for _layer in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
               nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
               nn.Flatten):  # fmt: skip
    stackable(KEEP)(_layer)
for _layer, _stacking in {
    nn.Conv2d: per_channel("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: per_channel(),
    nn.InstanceNorm2d: per_channel(),
    nn.GroupNorm: per_channel("num_groups", "num_channels"),
    nn.LayerNorm: Stacking(StackedLayerNorm.stack, slice_member),
    nn.Linear: Stacking(StackedLinear.stack, slice_member),
}.items():
    stackable(_stacking)(_layer)
