"""K networks of one architecture as one network whose layers hold the K members side by side (stacked runs).

A grid's runs differ only in a few hyper-parameters and the seed, and an online step is too small to keep a device
busy, so K runs train as one network (HFTA, Wang et al., MLSys 2021, fuses hyper-parameter-tuning jobs the same
way). Member k owns the k-th block of every layer's channels, as each layer's class declares
(``models/utils/layer_stacking.py``, by exact type; a layer with state, or a leaf, that declares nothing is refused
by name):

* ``Conv2d`` becomes a grouped convolution (``groups × K``) whose weights are the members' side by side;
* BatchNorm over K·C channels is exactly per-member BatchNorm, GroupNorm with K·G groups per-member GroupNorm,
  InstanceNorm, CN, BRN and TBBN likewise; LayerNorm normalises each member's C×H×W block (``StackedLayerNorm``);
  AdaB²N keeps each member's task weights, momentum and regulariser (its ``members``, ``models/utils/adab2n.py``);
* the classifier is one batched matrix product (``StackedLinear``).

The backbone's own ``forward`` is kept: its other operations act per channel. ``StackedNet`` takes member inputs
``[K, B, C, H, W]`` and returns ``[K, B, classes]``; ``member(k)`` gives member k back as an ordinary network. Every
parameter of a stacked network has the K member blocks along its first dimension (``member_parameters``), which is
how each member gets its own optimiser. A run alone is a stack of one member, built and trained the same way. A
layer that declares no stacking holds one member, itself: a network with one stacks for a run alone only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normcl.models.utils.layer_stacking import Stacking, own_tensors, place_like, placement, stacking_of, unchanged

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Modules that only hold others (an empty ``Sequential`` is the identity): a stack stacks their children."""


class UnstackableLayer(TypeError):
    """A layer of the network declares no stacking (``models/utils/layer_stacking.py``)."""


def _kept(layers: Sequence[nn.Module]) -> nn.Module:
    """The stack of a layer that declares no stacking: the layer itself, which holds its one member."""
    return layers[0]


KEPT = Stacking(_kept, lambda stacked, k, template: stacked, refresh=unchanged)
"""How a layer without a declaration of its own holds its one member: as it is, live (:func:`_stacking`)."""


def _stacking(layer: nn.Module) -> Stacking | None:
    """How ``layer`` stacks: its class's declaration; ``None`` for a container without tensors of its own (its
    children are stacked); :data:`KEPT` for any other layer, which declares nothing and holds one member."""
    stacking = stacking_of(type(layer))
    if stacking is not None:
        return stacking
    if own_tensors(layer) or (not dict(layer.named_children()) and not isinstance(layer, CONTAINERS)):
        return KEPT
    return None


def _stack(layers: Sequence[nn.Module], path: str = "") -> nn.Module:
    kinds = sorted({type(layer).__name__ for layer in layers})
    if len(kinds) > 1:
        raise ValueError(f"cannot stack layers of different types at {path or 'the root'}: {', '.join(kinds)}")
    stacking = _stacking(layers[0])
    if stacking is KEPT and len(layers) > 1:
        raise UnstackableLayer(
            f"{type(layers[0]).__name__} ({path or 'the network'}) declares no stacking: decorate its class with "
            "@stackable(...) (models/utils/layer_stacking.py; KEEP for a stateless per-channel layer), or run the "
            "members alone"
        )
    if stacking is not None:
        return place_like(stacking.stack(layers), layers[0])
    new = copy.copy(layers[0])  # a container (a backbone too): stack its children
    new._modules = {name: _stack([layer.get_submodule(name) for layer in layers], f"{path}.{name}".lstrip("."))
                    for name in dict(layers[0].named_children())}  # fmt: skip
    return new


class StackedNet(nn.Module):
    """K member networks as one (a run alone: one); ``forward([K, B, C, H, W]) -> [K, B, classes]``."""

    def __init__(self, nets: Sequence[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        if not nets:
            raise ValueError("a stack needs at least one member network")
        self.members = len(nets)
        self.channels_last = channels_last
        self._template = [copy.deepcopy(nets[0])]  # a list: not a sub-module, not in the state dict
        self._kept: dict[int, tuple[nn.Module, list[tuple[Stacking, nn.Module, nn.Module]], object]] = {}
        self.inner = _stack(nets)

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        x = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x).view(b, k, -1).transpose(0, 1)

    def member_parameters(self, k: int) -> list[Tensor]:
        """Member ``k``'s parameters, in ``parameters()`` order: each stacked parameter's k-th block as a leaf that
        shares its storage."""
        shapes = [p.shape for p in self._template[0].parameters()]
        blocks = [p.detach().chunk(self.members)[k] for p in self.parameters()]
        return [nn.Parameter(block.view(shape)) for block, shape in zip(blocks, shapes, strict=True)]

    def member(self, k: int, *, kept: bool = False) -> nn.Module:
        """Member ``k`` as an ordinary network of the members' architecture, with its current state, on the stack's
        device, dtype and memory format (a layer that declares no stacking: itself, live).

        ``kept``: the member is built once and kept; a later call brings the kept network to the current state in
        place (each layer's ``Stacking.refresh``) instead of building another. For reading only (scoring, digests,
        diagnostics): it is the same network at every call for ``k``, rebuilt when the stack moved to another device
        or dtype; a pickled or copied stack keeps none.
        """
        placed = placement(self.inner) if kept else None
        if kept and k in self._kept and self._kept[k][2] == placed:
            member, layers, _ = self._kept[k]
            for stacking, stacked, single in layers:
                stacking.refresh(stacked, k, single)
            return member
        template = self._template[0]
        stacked = dict(self.inner.named_modules())
        modules = template.named_modules()
        stackings = [(name, layer, s) for name, layer in modules if (s := _stacking(layer)) is not None]
        # Each layer's member first, handed to the copy of the template through deepcopy's memo: the copy takes them
        # as they are (a layer's sub-tree with it) and copies only the rest (containers).
        singles = {id(layer): stacking.member(stacked[name], k, layer) for name, layer, stacking in stackings}
        # The template stayed where the members were built: the member goes where the stack is.
        member = place_like(copy.deepcopy(template, singles), self.inner)
        if self.channels_last:
            member = member.to(memory_format=torch.channels_last)
        if kept:
            kept_layers = [(stacking, stacked[name], member.get_submodule(name)) for name, _, stacking in stackings]
            self._kept[k] = (member, kept_layers, placed)
        return member

    def __getstate__(self) -> dict[str, object]:
        """Pickled and deep-copied without the kept members (rebuilt on demand; their layers' stackings are
        closures, which pickle cannot hold)."""
        return {**super().__getstate__(), "_kept": {}}
