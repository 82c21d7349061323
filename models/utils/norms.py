"""Normalisation layers by name (``--nl``) and a converter that swaps them into any model.

``convert_norm(model, "BN")`` replaces every ``nn.BatchNorm2d`` of a module,
in the spirit of ``nn.SyncBatchNorm.convert_sync_batchnorm``. A registered norm
is a function ``(bn: nn.BatchNorm2d, **options) -> nn.Module`` that builds the
replacement for one layer, copying its state where the parameters match; it
takes the options it uses and ignores the rest. The new layer is placed on the
device (and floating dtype) of the layer it replaces.

Some norms depend on each layer's input size (LayerNorm normalises over
C x H x W). Their builder is marked with ``needs_shape``; ``convert_norm`` then
runs one probe forward of ``example_input`` to record every BatchNorm's input
``(C, H, W)`` and passes it to the builder as ``shape``.

Layers may also take part in the *task-aware protocol* used by the models:
``set_batch_tasks(task_ids, counts)`` before a training forward (``counts`` =
``task_counts(task_ids, num_tasks)``, computed once per batch for all layers), ``norm_loss`` (a
differentiable regulariser) after it, and ``end_task()`` at task boundaries.
The models call these through ``task_aware_layers``; the training loop never
knows which norm is in use.

Example::

    import torch
    import torchvision
    net = convert_norm(torchvision.models.resnet18(), "GN")
    net = convert_norm(torchvision.models.resnet18(), "LN", example_input=torch.randn(1, 3, 224, 224))
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from utils.core.registry import Registry

NormBuilder = Callable[..., nn.Module]
Shape = tuple[int, int, int]

NORMS: Registry = Registry("normalization layer", "models.utils")


def needs_shape(builder: NormBuilder) -> NormBuilder:
    """Mark a builder that wants each layer's input ``shape=(C, H, W)``, so ``convert_norm`` probes for it."""
    builder.needs_shape = True  # type: ignore[attr-defined]
    return builder


def copy_matching_state(src: nn.Module, dst: nn.Module) -> list[str]:
    """Copy every entry of ``src``'s state that ``dst`` has with the same shape; returns the copied keys.

    This is how a replacement inherits what it shares with the BatchNorm it
    replaces (affine weight/bias, running statistics) and nothing else.
    """
    source = src.state_dict()
    target = dst.state_dict()
    copied = [k for k, v in target.items() if k in source and source[k].shape == v.shape]
    dst.load_state_dict({**target, **{k: source[k] for k in copied}}, strict=True)
    return copied


@NORMS.register("BN")
def batch_norm(bn: nn.BatchNorm2d, affine: bool = True, **_: Any) -> nn.Module:
    """Plain BatchNorm (a copy of ``bn``), the baseline every other norm is compared with."""
    new = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, affine=affine, track_running_stats=True)
    copy_matching_state(bn, new)
    return new


def _place_like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Move ``new`` to the device and floating dtype of ``old``'s first floating tensor (if it has one)."""
    for t in itertools.chain(old.parameters(), old.buffers()):
        if t.is_floating_point():
            return new.to(device=t.device, dtype=t.dtype)
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


def convert_norm(module: nn.Module, name: str, example_input: Tensor | None = None, **options: Any) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by the norm called ``name``; returns the new module.

    ``example_input`` (a batch the module accepts, on its device) is required
    only by norms that need each layer's input size, e.g. ``"LN"``. A module
    without any BatchNorm2d is returned unchanged.
    """
    builder = NORMS.get(name)
    if not _batch_norms(module):
        return module
    shapes: dict[nn.Module, Shape] | None = None
    if getattr(builder, "needs_shape", False):
        if example_input is None:
            raise ValueError(
                f"norm '{name}' depends on each layer's input size: pass example_input=<a batch the model accepts>"
            )
        shapes = probe_input_shapes(module, example_input)
    return _replace(module, builder, shapes, options)


def _replace(
    module: nn.Module, builder: NormBuilder, shapes: dict[nn.Module, Shape] | None, options: dict[str, Any]
) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        extra = {} if shapes is None else {"shape": shapes[module]}
        return _place_like(builder(module, **options, **extra), module)
    for child_name, child in module.named_children():
        new = _replace(child, builder, shapes, options)
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


def task_counts(task_ids: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Samples of each task ``0 .. n-1`` in a batch, as floats; an ``index_add`` (``bincount`` would sync a GPU)."""
    counts = torch.zeros(n, dtype=dtype, device=task_ids.device)
    return counts.index_add(0, task_ids, torch.ones_like(task_ids, dtype=dtype))


def task_aware_layers(module: nn.Module) -> list[nn.Module]:
    """Layers that want each sample's task id (``set_batch_tasks``) before a training forward."""
    return [m for m in module.modules() if callable(getattr(m, "set_batch_tasks", None))]
