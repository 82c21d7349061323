"""Building a run: seeds, the device, the results folder's checks, and the network and model the flags ask for.

Shared by a run alone (``utils/main.py``) and a stack of runs (``utils/stack_training.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
from argparse import Namespace
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backbone import BACKBONES
from datasets.utils.continual_dataset import ContinualDataset
from models import MODELS
from models.utils.continual_model import ContinualModel
from models.utils.norms import NORMS, convert_norm
from utils.core.errors import UserError


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


def default_run_name(args: Namespace) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    buffer = f"_buf{args.buffer_size}" if args.buffer_size is not None else ""
    return f"{args.dataset}_{args.model}_{args.nl}{buffer}_seed{args.seed}_{stamp}_{os.getpid()}"


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
    """Refuse to start when the checkpoints (model, optimiser state, buffer; written twice over) cannot fit."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer = (
        0 if model.buffer is None else model.args.buffer_size * (math.prod(dataset.SHAPE) + 8 * dataset.n_classes())
    )
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


def build_model(args: Namespace, dataset: ContinualDataset) -> ContinualModel:
    """The network wrapped in the requested method (optimiser made last)."""
    net = build_network(args, dataset)
    apply_speed_options(net, args)
    return MODELS.get(args.model)(net, F.cross_entropy, args, dataset).to(dataset.device)


def apply_speed_options(net: torch.nn.Module, args: Namespace) -> None:
    """``--channels_last`` and ``--compile``, in place (state-dict keys unchanged, so checkpoints stay portable)."""
    if getattr(args, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    if getattr(args, "compile", False):
        mode = getattr(args, "compile_mode", "default")
        net.compile(**({} if mode == "default" else {"mode": mode}))
