"""K networks of one architecture as one network whose layers hold the K members side by side (stacked runs).

A grid's runs differ only in a few hyper-parameters and the seed, and an online step is too small to keep a device
busy, so K runs train as one network (HFTA, Wang et al., MLSys 2021, fuses hyper-parameter-tuning jobs the same
way). Member k owns the k-th block of every layer's channels:

* ``Conv2d`` becomes a grouped convolution (``groups × K``) whose weights are the members' side by side;
* BatchNorm over K·C channels is exactly per-member BatchNorm, GroupNorm with K·G groups per-member GroupNorm,
  InstanceNorm, CN and BRN likewise; LayerNorm normalises each member's C×H×W block (``StackedLayerNorm``);
  AdaB²N keeps each member's task weights, momentum and regulariser (``models/utils/stacked_adab2n.py``);
* the classifier is one batched matrix product (``StackedLinear``).

The backbone's own ``forward`` is kept: its other operations act per channel. ``StackedNet`` takes member inputs
``[K, B, C, H, W]`` and returns ``[K, B, classes]``; ``member(k)`` gives member k back as an ordinary network. Every
parameter of a stacked network has the K member blocks along its first dimension (``member_index``), which is how
the stacked optimiser gives each member its own learning rate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.utils.adab2n import AdaB2N
from models.utils.norm_layers import BatchRenorm2d, ContinualNorm2d
from models.utils.norms import place_like
from models.utils.stacked_adab2n import StackedAdaB2N


def _same(layers: Sequence[nn.Module], *names: str) -> None:
    """The members' layers must agree on every hyper-parameter that is not stacked."""
    for name in names:
        values = {repr(getattr(layer, name)) for layer in layers}
        if len(values) > 1:
            raise ValueError(f"cannot stack {type(layers[0]).__name__} layers whose {name} differ: {sorted(values)}")


def _cat(tensors: Sequence[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])  # type: ignore[union-attr]


def _load(new: nn.Module, layers: Sequence[nn.Module], shared: Sequence[str] = ()) -> nn.Module:
    """Copy the members' parameters and buffers into ``new``, side by side; ``shared`` buffers are equal and kept."""
    with torch.no_grad():
        for name, target in [*new.named_parameters(recurse=False), *new.named_buffers(recurse=False)]:
            sources = [getattr(layer, name) for layer in layers]
            if name in shared:
                if any(not torch.equal(s, sources[0]) for s in sources):
                    raise ValueError(f"cannot stack {type(layers[0]).__name__} layers whose {name} differ")
                target.copy_(sources[0])
            else:
                target.copy_(torch.cat([s.reshape(target.shape[0] // len(layers), *target.shape[1:]) for s in sources]))
    return new


def _slice(stacked: nn.Module, template: nn.Module, k: int, members: int, shared: Sequence[str] = ()) -> nn.Module:
    """Member ``k`` of ``stacked`` as a copy of ``template`` (the inverse of ``_load``)."""
    member = copy.deepcopy(template)
    with torch.no_grad():
        for name, target in [*member.named_parameters(recurse=False), *member.named_buffers(recurse=False)]:
            source = getattr(stacked, name)
            if name not in shared:
                source = source.reshape(members, -1, *source.shape[1:])[k].reshape(target.shape)
            target.copy_(source)
    return member


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


class StackedLinear(nn.Module):
    """K linear heads: ``[N, K·F]`` features -> ``[N, K, classes]`` logits, one ``linear`` per member (exact)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members = members
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        features = x.reshape(x.shape[0], self.members, -1)
        bias = [None] * self.members if self.bias is None else self.bias
        return torch.stack([F.linear(features[:, k], self.weight[k], bias[k]) for k in range(self.members)], 1)


def _conv(layers: Sequence[nn.Conv2d]) -> nn.Module:
    c, k = layers[0], len(layers)
    _same(layers, "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    _same(layers, "padding_mode")
    new = nn.Conv2d(
        k * c.in_channels, k * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, k * c.groups,
        c.bias is not None, c.padding_mode, device=c.weight.device, dtype=c.weight.dtype,
    )  # fmt: skip
    return _load(new, layers)


def _batch_norm(layers: Sequence[nn.BatchNorm2d]) -> nn.Module:
    bn, k = layers[0], len(layers)
    _same(layers, "num_features", "eps", "momentum", "affine", "track_running_stats")
    kwargs = {
        "eps": bn.eps,
        "momentum": bn.momentum,
        "affine": bn.affine,
        "track_running_stats": bn.track_running_stats,
    }
    if isinstance(bn, ContinualNorm2d):
        _same(layers, "groups")
        new: nn.Module = ContinualNorm2d(k * bn.num_features, k * bn.groups, **kwargs)
    elif isinstance(bn, BatchRenorm2d):
        _same(layers, "rmax", "dmax")
        new = BatchRenorm2d(k * bn.num_features, bn.rmax, bn.dmax, **kwargs)
    else:
        new = nn.BatchNorm2d(k * bn.num_features, **kwargs)
    return _load(place_like(new, bn), layers, shared=("num_batches_tracked",))


def _group_norm(layers: Sequence[nn.GroupNorm]) -> nn.Module:
    gn, k = layers[0], len(layers)
    _same(layers, "num_groups", "num_channels", "eps", "affine")
    return _load(place_like(nn.GroupNorm(k * gn.num_groups, k * gn.num_channels, gn.eps, gn.affine), gn), layers)


def _instance_norm(layers: Sequence[nn.InstanceNorm2d]) -> nn.Module:
    inorm, k = layers[0], len(layers)
    _same(layers, "num_features", "eps", "momentum", "affine", "track_running_stats")
    new = nn.InstanceNorm2d(k * inorm.num_features, inorm.eps, inorm.momentum, inorm.affine, inorm.track_running_stats)
    return _load(place_like(new, inorm), layers, shared=("num_batches_tracked",))


def _layer_norm(layers: Sequence[nn.LayerNorm]) -> nn.Module:
    ln, k = layers[0], len(layers)
    _same(layers, "normalized_shape", "eps", "elementwise_affine")
    return _load(place_like(StackedLayerNorm(k, ln.normalized_shape, ln.eps, ln.elementwise_affine), ln), layers)


def _linear(layers: Sequence[nn.Linear]) -> nn.Module:
    lin = layers[0]
    _same(layers, "in_features", "out_features")
    new = StackedLinear(len(layers), lin.in_features, lin.out_features, lin.bias is not None)
    return _load(place_like(new, lin), layers)


STACKERS: tuple[tuple[type[nn.Module], Callable[[Sequence], nn.Module]], ...] = (
    (AdaB2N, StackedAdaB2N.stack),
    (nn.BatchNorm2d, _batch_norm),  # and its subclasses CN and BRN
    (nn.Conv2d, _conv),
    (nn.GroupNorm, _group_norm),
    (nn.InstanceNorm2d, _instance_norm),
    (nn.LayerNorm, _layer_norm),
    (nn.Linear, _linear),
)
"""How each kind of layer is stacked, most specific type first."""
SHARED = {"num_batches_tracked", "tasks_completed"}
"""Buffers every member has the same value of (the members train in lockstep)."""


def _stack(layers: Sequence[nn.Module]) -> nn.Module:
    for kind, stacker in STACKERS:
        if isinstance(layers[0], kind):
            kinds = sorted({type(layer).__name__ for layer in layers})
            if len(kinds) > 1:
                raise ValueError(f"cannot stack layers of different types: {', '.join(kinds)}")
            return place_like(stacker(layers), layers[0])
    if next(layers[0].parameters(recurse=False), None) is not None or next(layers[0].buffers(recurse=False), None):
        raise TypeError(f"cannot stack {type(layers[0]).__name__}: a layer with parameters that no stacker knows")
    new = copy.copy(layers[0])  # a container or a parameter-free layer: stack its children
    new._modules = {name: _stack([layer.get_submodule(name) for layer in layers]) for name in layers[0]._modules}
    return new


class StackedNet(nn.Module):
    """K member networks as one; ``forward([K, B, C, H, W]) -> [K, B, classes]``."""

    def __init__(self, nets: Sequence[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        if not nets:
            raise ValueError("a stack needs at least one member network")
        self.members = len(nets)
        self.channels_last = channels_last
        self.inner = _stack(nets)
        self._template = [copy.deepcopy(nets[0])]  # a list: not a sub-module, not in the state dict

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        x = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x).transpose(0, 1)

    def member_index(self, tensor: Tensor) -> Tensor:
        """The member of each block of a stacked parameter's first dimension, shaped to broadcast against it."""
        index = torch.arange(self.members, device=tensor.device).repeat_interleave(tensor.shape[0] // self.members)
        return index.view(-1, *([1] * (tensor.dim() - 1)))

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as an ordinary network of the members' architecture, with its current state, on the stack's
        device, dtype and memory format."""
        template = self._template[0]
        member = copy.deepcopy(template)
        stacked = dict(self.inner.named_modules())
        for name, layer in template.named_modules():
            if any(True for _ in layer.parameters(recurse=False)) or any(True for _ in layer.buffers(recurse=False)):
                extract = getattr(stacked[name], "member", None)
                single = extract(k, layer) if extract else _slice(stacked[name], layer, k, self.members, SHARED)
                parent, _, child = name.rpartition(".")
                setattr(member.get_submodule(parent) if parent else member, child, single)
        member = place_like(member, self.inner)  # the template stayed where the members were built
        return member.to(memory_format=torch.channels_last) if self.channels_last else member
