"""Recency-bias diagnostics of normalisation statistics (``--diagnose_norm 1``).

The paper's central observation (Sec. 3) is that BatchNorm's running
statistics drift towards the most recent task. This module measures it
directly: after a task, the training images of every seen task go through the
network in eval mode, and at every layer that keeps running statistics
(BatchNorm, AdaB²N, CN, BRN) the input's per-channel population mean and
variance are accumulated per task. The running statistics are then compared
with

* the **task-balanced** population statistics — the equal-weight mixture of the
  seen tasks: mean ``μ = (1/T) Σ_t μ_t``, variance ``(1/T) Σ_t E_t[x²] − μ²``;
* the statistics of the **latest task** alone.

A layer whose running statistics describe a transform of its input (CN: the
group-normalised input) names it in a ``running_stats_input(x)`` method (the
``StatisticsInput`` protocol of ``models/utils/task_aware.py``), and the
population statistics are taken of that. Distances are root-mean-square over
channels. A layer with recency bias sits close to the latest task and far from
the balanced statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models.utils.task_aware import StatisticsInput

MAX_SAMPLES_PER_TASK = 1000


def stat_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Layers with running statistics, by qualified name."""
    return {
        name: m
        for name, m in net.named_modules()
        if isinstance(getattr(m, "running_mean", None), Tensor) and isinstance(getattr(m, "running_var", None), Tensor)
    }


@torch.no_grad()
def population_statistics(
    net: nn.Module, layers: dict[str, nn.Module], inputs: list[Tensor], batch_size: int = 256
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer, the per-channel (mean, E[x²]) of its input over each input set: tensors of shape (sets, C)."""
    sums: dict[str, list[Tensor]] = {name: [] for name in layers}
    current: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            x = (module.running_stats_input(x) if isinstance(module, StatisticsInput) else x).double()
            acc = torch.stack([x.sum((0, 2, 3)), x.square().sum((0, 2, 3))])
            n = x.shape[0] * x.shape[2] * x.shape[3]
            prev = current.get(name)
            current[name] = torch.cat([acc, torch.full_like(acc[:1], n)]) + (0 if prev is None else prev)

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = net.training
    net.eval()
    try:
        for x in inputs:
            current.clear()
            for start in range(0, len(x), batch_size):
                net.forward(x[start : start + batch_size])  # eager: a compiled call would recompile per hook
            for name in layers:
                total, sq, n = current[name]
                sums[name].append(torch.stack([total / n, sq / n]))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return {name: (torch.stack(v)[:, 0], torch.stack(v)[:, 1]) for name, v in sums.items()}


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def compare(running_mean: Tensor, running_var: Tensor, means: Tensor, sq: Tensor) -> dict[str, float]:
    """Distances of running statistics to the balanced and to the latest task's population statistics."""
    balanced_mean = means.mean(0)
    balanced_var = sq.mean(0) - balanced_mean.square()
    latest_var = sq[-1] - means[-1].square()
    return {
        "mean_to_balanced": _rms(running_mean, balanced_mean),
        "var_to_balanced": _rms(running_var, balanced_var),
        "mean_to_latest": _rms(running_mean, means[-1]),
        "var_to_latest": _rms(running_var, latest_var),
    }


def diagnose(net: nn.Module, dataset: ContinualDataset, last_task: int, batch_size: int = 256) -> dict[str, Any]:
    """Per-layer and averaged distances after training ``last_task`` (tasks 0..last_task are seen)."""
    layers = stat_layers(net)
    if not layers:
        return {"layers": {}, "summary": {}}
    dtype = next(iter(layers.values())).running_mean.dtype  # --dtype float64: the inputs follow the network
    tasks = range(last_task + 1)
    inputs = [dataset.test_transform(dataset.task(t).train_x[:MAX_SAMPLES_PER_TASK]).to(dtype) for t in tasks]
    stats = population_statistics(net, layers, inputs, batch_size)
    per_layer = {name: compare(layer.running_mean, layer.running_var, *stats[name]) for name, layer in layers.items()}
    keys = next(iter(per_layer.values())).keys()
    summary = {k: sum(v[k] for v in per_layer.values()) / len(per_layer) for k in keys}
    return {"layers": per_layer, "summary": summary}
