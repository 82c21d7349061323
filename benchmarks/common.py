"""Shared set-up of the benchmarks: a real framework run, on real or synthetic data of a dataset's shape; the
environment of a figure measured in this process (``benchmarks/output.py``'s ``ENVIRONMENT``)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normcl.datasets import get_dataset_class
from normcl.datasets.utils.continual_dataset import ContinualDataset, RawSplit
from normcl.models.utils.continual_model import ContinualModel
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.task_aware import task_aware_layers, task_counts
from normcl.utils.args import parse_args
from normcl.utils.results import code_version, cpu_environment
from normcl.utils.run_setup import build_model, resolve_device, set_seed


def environment(device: torch.device) -> dict[str, Any]:
    """``ENVIRONMENT`` (``benchmarks/output.py``) of this process, measuring on ``device``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **cpu_environment(),
        **code_version(),
    }


def synthetic(dataset_cls: type[ContinualDataset], per_class: int) -> type[ContinualDataset]:
    """``dataset_cls`` with random uint8 images of its shape: its real pipeline without its files (a fifth of them,
    every class's, as the test set)."""

    class Synthetic(dataset_cls):  # type: ignore[misc, valid-type]
        def load_raw(self) -> tuple[RawSplit, RawSplit]:
            rng = np.random.default_rng(0)
            n = per_class * self.n_classes()
            y = np.repeat(np.arange(self.n_classes()), per_class)
            x = rng.integers(0, 256, (n, *self.SHAPE), dtype=np.uint8)
            return RawSplit(x, y), RawSplit(x[::5], y[::5])

    return Synthetic


def build(
    argv: Sequence[str], synthetic_per_class: int | None
) -> tuple[argparse.Namespace, ContinualDataset, ContinualModel]:
    """Parse framework arguments and build the dataset (prepared) and the model, as ``normcl.utils.main.run`` does."""
    args = parse_args(list(argv))
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    args.device = str(device)
    args.setting = "class-il"
    args.run_name = "benchmark"
    set_seed(args.seed)
    cls = get_dataset_class(args.dataset)
    if synthetic_per_class:
        cls = synthetic(cls, synthetic_per_class)
    dataset = cls(args, device)
    dataset.prepare()
    return args, dataset, build_model([args], [dataset])


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall milliseconds of one call, synchronising the device before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def after_one_task(net: torch.nn.Module, nl: str, tasks: int) -> torch.nn.Module:
    """``net`` with ``nl`` in place of its BatchNorm layers (AdaB²N: κ 0.4, λ 0.1), one task completed, so a replay
    step's task-balanced statistics are in use."""
    if nl != "BN":
        options = {"num_tasks": tasks, "kappa": 0.4, "lambd": 0.1} if nl == "AdaB2N" else {}
        example = torch.zeros(1, 1, 28, 28, device=next(net.parameters()).device)
        net = convert_norm(net, nl, example_input=example, **options)
    for layer in task_aware_layers(net):
        layer.end_task()
    return net


def replay_step(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, tasks: int, stream: int
) -> Callable[[], None]:
    """Forward + backward of ``net`` on a batch whose first ``stream`` samples are the stream batch, task ids and
    that size handed to its task-aware layers first and their regularisers (weight 0.1) in the loss. A stack:
    ``x [K, B, ...]``, ``y`` and ``ids [K, B]``."""
    layers = task_aware_layers(net)
    counts = task_counts(ids, tasks)

    def step() -> None:
        for layer in layers:
            layer.set_batch_tasks(ids, counts, stream)
        out = net(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        losses = [layer.norm_loss.sum() for layer in layers if layer.norm_loss is not None]
        if losses:
            loss = loss + 0.1 * torch.stack(losses).sum()
        net.zero_grad(set_to_none=True)
        loss.backward()

    return step


def interleaved(
    steps: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median milliseconds of each step, timed in turn (A, B, A, B, ...) so that the machine's drift cancels."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            ms = timed(step, device)
            if i >= warmup:
                times[name].append(ms)
    return {name: statistics.median(values) for name, values in times.items()}
