"""Normalisation layers by name (``--nl``) and a converter that swaps them into any model.

``convert_norm(model, "BN")`` replaces every ``nn.BatchNorm2d`` of a module,
in the spirit of ``nn.SyncBatchNorm.convert_sync_batchnorm``. A registered norm
is a function ``(bn: nn.BatchNorm2d, **options) -> nn.Module`` that builds the
replacement for one layer, copying its state where the parameters match.

Layers may also take part in the *task-aware protocol* used by the models:
``set_batch_tasks(task_ids)`` before a training forward, ``norm_loss`` (a
differentiable regulariser) after it, and ``end_task()`` at task boundaries.
The models call these through ``task_aware_layers``; the training loop never
knows which norm is in use.

Example::

    import torchvision
    net = torchvision.models.resnet18()
    net = convert_norm(net, "BN")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from utils.registry import Registry

NormBuilder = Callable[..., nn.Module]

NORMS: Registry = Registry("normalization layer", "models.utils")


@NORMS.register("BN")
def batch_norm(bn: nn.BatchNorm2d, affine: bool = True, **_: Any) -> nn.Module:
    """Plain BatchNorm (a copy of ``bn``), the baseline every other norm is compared with."""
    new = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, affine=affine, track_running_stats=True)
    new.load_state_dict(bn.state_dict() if affine else _stats_only(bn), strict=True)
    return new.to(bn.running_mean.device if bn.running_mean is not None else "cpu")


def _stats_only(bn: nn.BatchNorm2d) -> dict[str, Any]:
    """BatchNorm buffers without the affine parameters, for ``affine=False`` copies."""
    return {k: v for k, v in bn.state_dict().items() if k not in ("weight", "bias")}


def convert_norm(module: nn.Module, name: str, **options: Any) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by the norm called ``name``; returns the new module."""
    builder = NORMS.get(name)
    if isinstance(module, nn.BatchNorm2d):
        return builder(module, **options)
    for child_name, child in module.named_children():
        new = convert_norm(child, name, **options)
        if new is not child:
            setattr(module, child_name, new)
    return module


def task_aware_layers(module: nn.Module) -> list[nn.Module]:
    """Layers that want each sample's task id (``set_batch_tasks``) before a training forward."""
    return [m for m in module.modules() if callable(getattr(m, "set_batch_tasks", None))]
