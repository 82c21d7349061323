"""Normalisation layers by name (``--nl``) and a converter that swaps them into any model.

``convert_norm(model, "GN")`` replaces every ``nn.BatchNorm2d`` of a module, in the spirit of
``nn.SyncBatchNorm.convert_sync_batchnorm``; the norm is given by registered name or as a builder (a function, or a
``functools.partial`` with its hyper-parameters bound, as timm's ``create_norm``). A builder is
``(bn: nn.BatchNorm2d, *, <typed keywords>) -> nn.Module``: it builds the replacement of one layer, copying its state
where the parameters match, and its keywords are its hyper-parameters. ``convert_norm`` rejects a keyword the
builder does not take with a ``TypeError`` naming it. The new layer is placed on the device (and floating dtype) of
the layer it replaces.

A norm is registered in its own file with ``@register_norm(name, *options)``: the options are its command-line
flags (``utils/core/options.py``), each setting one keyword of the builder, with the builder's default; so adding a
norm with its own hyper-parameter is adding one file to ``models/utils/``.

A builder that takes a ``shape`` keyword depends on each layer's input size (LayerNorm normalises over C x H x W):
``convert_norm`` then runs one probe forward of ``example_input`` to record every BatchNorm's input ``(C, H, W)``
and passes it as ``shape``.

Layers may also take part in the task-aware protocol of ``models/utils/task_aware.py`` (AdaB²N does).

Example::

    import torch
    import torchvision
    net = convert_norm(torchvision.models.resnet18(), "GN")
    net = convert_norm(torchvision.models.resnet18(), "LN", example_input=torch.randn(1, 3, 224, 224))
    net = convert_norm(torchvision.models.resnet18(), "AdaB2N", num_tasks=5, kappa=0.4)
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normcl.models.utils import NORMS
from normcl.models.utils.layer_stacking import Stacking, place_like, stacking_of
from normcl.utils.core.options import Option

NormBuilder = Callable[..., nn.Module]
Shape = tuple[int, int, int]
SHAPE_KEYWORD = "shape"


@dataclass(frozen=True)
class NormSpec:
    """A normalisation layer: its builder, the command-line options it declares (typed, with defaults), and whether
    its reference runs it without affine parameters (``without_affine``: the launcher adds ``--no_affine 1``)."""

    name: str
    builder: NormBuilder
    options: tuple[Option, ...] = ()
    without_affine: bool = False

    @functools.cached_property
    def layer(self) -> type[nn.Module] | None:
        """The class of the layers the builder makes, from its return annotation (``None``: not a class)."""
        try:
            made = typing.get_type_hints(self.builder).get("return")
        except (NameError, TypeError):  # an annotation that does not resolve names no class
            return None
        return made if isinstance(made, type) and issubclass(made, nn.Module) else None

    @property
    def stacking(self) -> Stacking | None:
        """How the layers stack (``models/utils/layer_stacking.py``): declared on exactly the class the builder
        returns; ``None``: the norm's runs cannot be stacked."""
        return None if self.layer is None else stacking_of(self.layer)

    def per_member(self, option: Option) -> bool:
        """Whether stacked members may differ in ``option``: the layer's stacking says so."""
        return self.stacking is not None and option.keyword in self.stacking.per_member

    @functools.cached_property
    def keywords(self) -> frozenset[str] | None:
        """The keywords the builder takes besides the layer it replaces; ``None``: any (``**kwargs``)."""
        parameters = list(inspect.signature(self.builder).parameters.values())[1:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return frozenset(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)

    @property
    def needs_shape(self) -> bool:
        return self.keywords is not None and SHAPE_KEYWORD in self.keywords

    def takes(self, keyword: str) -> bool:
        return self.keywords is None or keyword in self.keywords

    def check_keywords(self, given: Mapping[str, Any]) -> None:
        """``TypeError`` naming a keyword the builder does not take, or a required one that is missing."""
        if self.keywords is None:
            return
        allowed = self.keywords - {SHAPE_KEYWORD}
        for keyword in given:
            if keyword not in allowed:
                takes = ", ".join(sorted(allowed)) or "none"
                raise TypeError(f"norm '{self.name}' takes no keyword {keyword!r}; its keywords are: {takes}")
        parameters = list(inspect.signature(self.builder).parameters.values())[1:]
        for p in parameters:
            if p.default is inspect.Parameter.empty and p.name not in given and p.name != SHAPE_KEYWORD:
                raise TypeError(f"norm '{self.name}' needs the keyword {p.name!r}")


def register_norm(name: str, *options: Option, without_affine: bool = False) -> Callable[[NormBuilder], NormBuilder]:
    """Register a builder under ``name`` with its command-line options (type and default from its signature);
    ``without_affine``: its reference runs it without affine parameters."""

    def decorator(builder: NormBuilder) -> NormBuilder:
        resolved = tuple(o.from_signature(builder) for o in options)
        NORMS.register(name)(NormSpec(name, builder, resolved, without_affine))
        return builder

    return decorator


def copy_matching_state(src: nn.Module, dst: nn.Module) -> list[str]:
    """Copy every tensor of ``src``'s state that ``dst`` has with the same shape; returns the copied keys.

    This is how a replacement inherits what it shares with the BatchNorm it
    replaces (affine weight/bias, running statistics) and nothing else (not a layer's extra state, e.g. TBBN's).
    """
    source = src.state_dict()
    target = dst.state_dict()
    copied = [
        k
        for k, v in target.items()
        if isinstance(v, Tensor) and isinstance(source.get(k), Tensor) and source[k].shape == v.shape
    ]
    dst.load_state_dict({**target, **{k: source[k] for k in copied}}, strict=True)
    return copied


@register_norm("BN")
def batch_norm(bn: nn.BatchNorm2d, *, affine: bool = True) -> nn.BatchNorm2d:
    """Plain BatchNorm (a copy of ``bn``), the baseline every other norm is compared with."""
    new = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, affine=affine, track_running_stats=True)
    copy_matching_state(bn, new)
    return new


def _batch_norms(module: nn.Module) -> dict[nn.Module, str]:
    """Every ``nn.BatchNorm2d`` of ``module`` (itself included) with its qualified name."""
    return {m: name or "<root>" for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


def probe_input_shapes(module: nn.Module, example_input: Tensor) -> dict[nn.Module, Shape]:
    """Input ``(C, H, W)`` of every ``nn.BatchNorm2d`` of ``module``, from one forward of ``example_input``.

    The probe runs in eval mode under ``no_grad`` so no running statistic moves;
    each sub-module's train/eval mode is restored and the hooks removed afterwards.
    """
    layers = _batch_norms(module)
    shapes: dict[nn.Module, Shape] = {}

    def record(layer: nn.Module, inputs: tuple[Any, ...]) -> None:
        shape = tuple(int(s) for s in inputs[0].shape[1:])
        if len(shape) != 3:
            raise ValueError(f"{layers[layer]}: expected a 4-D input (N, C, H, W), got shape {tuple(inputs[0].shape)}")
        if shapes.setdefault(layer, shape) != shape:  # type: ignore[arg-type]
            raise ValueError(f"{layers[layer]} sees inputs of sizes {shapes[layer]} and {shape}; one size is needed")

    modes = {m: m.training for m in module.modules()}
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        module.eval()
        with torch.no_grad():
            module(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    missed = [name for layer, name in layers.items() if layer not in shapes]
    if missed:
        raise ValueError(f"the probe forward never reached {', '.join(missed)}; their input size is unknown")
    return shapes


def convert_norm(
    module: nn.Module, norm: str | NormBuilder, example_input: Tensor | None = None, **options: Any
) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by ``norm`` (a registered name or a builder); returns it.

    ``options`` are the builder's keywords (e.g. ``num_tasks=5, kappa=0.4`` for AdaB²N); an unknown one raises
    ``TypeError``. ``example_input`` (a batch the module accepts, on its device) is required only by norms that
    need each layer's input size, e.g. ``"LN"``. A module without any BatchNorm2d is returned unchanged.
    """
    spec = NORMS.get(norm) if isinstance(norm, str) else NormSpec(getattr(norm, "__name__", repr(norm)), norm)
    spec.check_keywords(options)
    if not _batch_norms(module):
        return module
    shapes: dict[nn.Module, Shape] | None = None
    if spec.needs_shape:
        if example_input is None:
            raise ValueError(
                f"norm '{spec.name}' depends on each layer's input size: pass example_input=<a batch the model accepts>"
            )
        shapes = probe_input_shapes(module, example_input)
    return _replace(module, spec, shapes, options)


def _replace(
    module: nn.Module, spec: NormSpec, shapes: dict[nn.Module, Shape] | None, options: dict[str, Any]
) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        extra = {} if shapes is None else {SHAPE_KEYWORD: shapes[module]}
        new = spec.builder(module, **options, **extra)
        if spec.stacking is not None and type(new) is not spec.layer:  # its stacking is the declared class's
            raise TypeError(
                f"norm '{spec.name}' built a {type(new).__name__}, not the {spec.layer.__name__} it declares"
            )
        return place_like(new, module)
    for child_name, child in module.named_children():
        new = _replace(child, spec, shapes, options)
        if new is not child:
            setattr(module, child_name, new)
    return module


def float32_under_autocast(forward: Callable[[Any, Tensor], Tensor]) -> Callable[[Any, Tensor], Tensor]:
    """Run a hand-written norm layer's ``forward`` in float32 when autocast (``--amp``) is on.

    Batch statistics of bf16 activations lose most of their digits, and autocast would run AdaB²N's weighted
    means (a matmul) in bf16; torch's own BatchNorm keeps float32 statistics, so ours do too.
    """

    @functools.wraps(forward)
    def wrapper(self: Any, x: Tensor) -> Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(self, x)
        with torch.autocast(device_type, enabled=False):
            return forward(self, x.float())

    return wrapper
