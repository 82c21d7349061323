"""Building a run: seeds, the device, the results folder's checks, each member's dataset, network and generator, and
the model the flags ask for (``utils/main.py``; a run alone is a stack of one member)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normcl.backbone import BACKBONES
from normcl.datasets import get_dataset_class
from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models import MODELS
from normcl.models.utils import NORMS
from normcl.models.utils.continual_model import ContinualModel
from normcl.models.utils.members import Members
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.stacking import StackedNet
from normcl.utils.core.errors import UserError


def set_seed(seed: int | None) -> None:
    """Seed every generator the run draws from (Python, NumPy, torch on CPU and CUDA)."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device '{name}' is not a torch device ({e}); use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def check_writable(path: Path) -> None:
    """Fail before training, not after, when the results cannot be saved."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--results_path {path} is a file; pass a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--results_path {path} is not writable ({e.strerror}); pass a writable directory") from None


def check_disk_space(path: Path, model: ContinualModel, dataset: ContinualDataset) -> None:
    """Refuse to start when the checkpoints (model, optimiser state, every member's buffer; written twice over)
    cannot fit."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    per_sample = math.prod(dataset.SHAPE) + 8 * dataset.n_classes()
    buffer = 0 if model.buffer is None else model.members.count * model.members.args[0].buffer_size * per_sample
    needed = 3 * (2 * params + buffer) + (1 << 20)
    free = shutil.disk_usage(path).free
    if free < needed:
        raise UserError(
            f"--results_path {path} has {free / 2**20:.1f} MiB free, checkpoints need about {needed / 2**20:.1f} MiB; "
            "free some space or pass another --results_path"
        )


def norm_keywords(args: Namespace, dataset: ContinualDataset) -> dict[str, Any]:
    """The ``--nl`` builder's keywords: its declared options from ``args``, and the run's facts it takes."""
    spec = NORMS.get(args.nl)
    facts = {"affine": not args.no_affine, "num_tasks": dataset.N_TASKS}
    keywords = {key: value for key, value in facts.items() if spec.takes(key)}
    return keywords | {o.keyword: o.command_value(getattr(args, o.dest)) for o in spec.options}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside draw their parameters in ``dtype`` (torch's default dtype, restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_network(args: Namespace, dataset: ContinualDataset) -> torch.nn.Module:
    """The backbone with the requested norm layers, on the device, in ``--dtype`` (draws its initialisation from
    torch's global generator, in ``--dtype``: a float64 run holds no float32 rounding, whose last bit differs between
    CPU kernel sets, from its first weight on)."""
    with default_dtype(getattr(torch, args.dtype)):
        net = BACKBONES.get(args.backbone)(num_classes=dataset.n_classes(), nf=args.nf, in_channels=dataset.SHAPE[0])
        net = net.to(dataset.device)
        example = torch.zeros(1, *dataset.SHAPE, device=dataset.device)
        net = convert_norm(net, args.nl, example_input=example, **norm_keywords(args, dataset)).to(dataset.device)
    return net


def member_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """The generator a member's run draws its stream from, just after building its network: the CPU's global state as
    it is now (the draws of a run alone before stacks existed), or on a GPU a fresh one of the seed (initialisation
    draws only on the CPU; no seed: a nondeterministic one, as the global generator would be)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
        return generator
    return generator.manual_seed(seed)


def member_datasets(members: list[Namespace], device: torch.device) -> list[ContinualDataset]:
    """Each member's dataset (members with the same class order share one), checked to train in lockstep."""
    dataset_cls = get_dataset_class(members[0].dataset)
    datasets: list[ContinualDataset] = []
    for args in members:
        dataset = dataset_cls(args, device)
        same = next((d for d in datasets if (d.class_order == dataset.class_order).all()), None)
        if same is None:
            dataset.prepare()
            check_trainable(dataset)
        datasets.append(same or dataset)
    for t in range(datasets[0].N_TASKS):
        sizes = {(len(d.task(t).train_y), len(d.task(t).test_y)) for d in datasets}
        if len(sizes) > 1:
            raise UserError(
                f"the members' task {t + 1} differs in size between their class orders ({sorted(sizes)}); "
                "stack only members whose tasks have equal sizes (e.g. a balanced dataset or one --seed)"
            )
    return datasets


def check_trainable(dataset: ContinualDataset) -> None:
    """Fail before training if a task has no training data (e.g. a tiny ``--samples_per_class``)."""
    for t in range(dataset.N_TASKS):
        if len(dataset.task(t).train_y) == 0 or len(dataset.task(t).test_y) == 0:
            raise UserError(f"task {t + 1} of {dataset.name} has no training or test samples; check the data files")


def build_model(runs: list[Namespace], datasets: list[ContinualDataset]) -> ContinualModel:
    """The runs' networks, each built as its run alone builds it (its seed), stacked as one network of their members,
    in the requested method; the optimisers made last."""
    nets, generators = [], []
    device = datasets[0].device
    for args, dataset in zip(runs, datasets, strict=True):
        set_seed(args.seed)
        nets.append(build_network(args, dataset))
        generators.append(member_generator(device, args.seed))
    members = Members(runs, generators)
    shared = members.shared()
    try:
        net = StackedNet(nets, channels_last=bool(shared.channels_last))
    except ValueError as e:
        raise UserError(f"the members cannot be stacked: {e}") from None
    apply_speed_options(net.inner, shared)
    return MODELS.get(shared.model)(net, F.cross_entropy, members, datasets[0]).to(device)


def apply_speed_options(net: torch.nn.Module, args: Namespace) -> None:
    """``--channels_last`` and ``--compile``, in place (state-dict keys unchanged, so checkpoints stay portable); on the
    members' network, ``StackedNet.inner``."""
    if getattr(args, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    if getattr(args, "compile", False):
        mode = getattr(args, "compile_mode", "default")
        # Static shapes: a run meets a few batch shapes (stream, replay, joint), each compiled once. With dynamo's
        # automatic dynamic shapes (its default) the step after the first shape change was 10x slower on the CPU
        # (docs/benchmarks.md, 2026-12-07).
        net.compile(dynamic=False, **({} if mode == "default" else {"mode": mode}))
