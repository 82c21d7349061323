"""Run one continual-learning experiment: ``python utils/main.py --dataset seq-fmnist --model er_ace ...``.

Also runnable as ``python -m utils.main``. Bad input ends with a one-line
message and exit code 2, before anything is written. A checkpoint is kept
after every task (and every ``--checkpoint_every`` steps) until the results
file is written; ``--resume 1 --run_name NAME`` continues from it.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import normcl_bootstrap  # noqa: F401  (first: this repository's packages win over installed ones)
from backbone import BACKBONES
from datasets import get_dataset_class
from datasets.utils.continual_dataset import ContinualDataset
from models import MODELS
from models.utils.continual_model import ContinualModel
from models.utils.norms import NORMS, convert_norm
from utils.args import parse_args
from utils.checkpoint import checkpoint_file, load_checkpoint
from utils.core.errors import UserError
from utils.results import (
    build_results,
    code_version,
    partial_results_file,
    results_file,
    summary_table,
    write_results,
)
from utils.training import Interrupted, NonFiniteLoss, Trainer, check_trainable
from utils.wandb_logger import WandbLogger


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


def build_model(args: Namespace, dataset: ContinualDataset) -> ContinualModel:
    """Backbone with the requested norm layers, wrapped in the requested method (optimiser made last)."""
    net = BACKBONES.get(args.backbone)(num_classes=dataset.n_classes(), nf=args.nf, in_channels=dataset.SHAPE[0])
    net = net.to(dataset.device)
    example = torch.zeros(1, *dataset.SHAPE, device=dataset.device)
    net = convert_norm(net, args.nl, example_input=example, **norm_keywords(args, dataset)).to(dataset.device)
    if args.dtype != "float32":
        net = net.to(getattr(torch, args.dtype))
    apply_speed_options(net, args)
    return MODELS.get(args.model)(net, F.cross_entropy, args, dataset).to(dataset.device)


def apply_speed_options(net: torch.nn.Module, args: Namespace) -> None:
    """``--channels_last`` and ``--compile``, in place (state-dict keys unchanged, so checkpoints stay portable)."""
    if getattr(args, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    if getattr(args, "compile", False):
        net.compile()


def run(args: Namespace) -> dict[str, Any]:
    """Train and evaluate as ``args`` says; returns the results document (also written to disk)."""
    start = time.perf_counter()
    code = code_version()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    args.device = str(device)
    dataset_cls = get_dataset_class(args.dataset)
    args.setting = dataset_cls.SETTING
    args.run_name = args.run_name or default_run_name(args)
    out = results_file(args)
    ckpt = None if args.disable_log else checkpoint_file(out)
    dataset = dataset_cls(args, device)
    dataset.prepare()
    check_trainable(dataset)
    if not args.disable_log:
        check_writable(Path(args.results_path))
    payload = load_checkpoint(ckpt, args, device) if args.resume and ckpt is not None else None
    set_seed(args.seed)
    model = build_model(args, dataset)
    if not args.disable_log:
        check_disk_space(Path(args.results_path), model, dataset)
    trainer = Trainer(model, dataset, args, WandbLogger(args), ckpt)
    if payload is not None:
        trainer.load_state(payload)
        print(f"Resuming {args.run_name} at task {model.current_task + 1}, step {trainer.pos.step}", flush=True)
    try:
        history = trainer.run()
    except NonFiniteLoss as e:
        partial = build_results(args, trainer.history, model.forward_mode, time.perf_counter() - start, code)
        partial["stopped"] = e.record()
        if not args.disable_log:
            write_results(partial_results_file(out), partial)
            print(f"results of the completed tasks: {partial_results_file(out)}", file=sys.stderr)
        trainer.logger.finish(exit_code=3)
        raise
    except BaseException:
        trainer.logger.finish(exit_code=1)
        raise
    results = build_results(args, history, model.forward_mode, time.perf_counter() - start, code)
    trainer.logger.log_final(results["final"])
    trainer.logger.finish()
    if not args.disable_log:
        write_results(out, results)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    print(summary_table(results))
    if not args.disable_log:
        print(f"Results written to {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 3 non-finite loss (partial results saved), 128 + N stopped by signal N."""
    try:
        run(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}; lower --lr or check the data", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"{e}: checkpoint saved; continue with --resume 1", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
