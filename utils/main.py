"""Run one continual-learning experiment: ``python utils/main.py --dataset seq-fmnist --model er_ace ...``.

Also runnable as ``python -m utils.main``. Bad input ends with a one-line
message and exit code 2, before anything is written. A checkpoint is kept
after every task (and every ``--checkpoint_every`` steps) until the results
file is written; ``--resume 1 --run_name NAME`` continues from it.

Stacked runs: ``python utils/main.py FLAGS --member "--seed 0 --kappa 0.4 --run_name A" --member "--seed 1 ..."``
trains each ``--member`` (the shared flags plus its own) as the same run it would be alone: its own class order, data
order, augmentation, buffer and draws (its generator, in the order of its run alone), arithmetic, results file and
wandb run. Every run is such a stack; without ``--member`` it has one member, whose network is the ordinary one. The
members train in lockstep through ``normcl.utils.training.Trainer``, so they must share everything that shapes a step
(dataset, model, norm, buffer size, batch size, epochs, network width, forward mode); ``utils/member_args.py``
checks that.
A member whose loss turns NaN or infinite stops with its partial results, and the others go on. A stack checkpoints
as a run does (``{first member}.stack.ckpt``), so ``kill -9`` and ``--resume 1`` with the same command continue every
member exactly.
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from normcl.datasets import get_dataset_class
from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.args import parse_args
from normcl.utils.checkpoint import load_checkpoint
from normcl.utils.core.errors import UserError
from normcl.utils.core.run_files import checkpoint_file, default_run_name, partial_results_file, results_file
from normcl.utils.member_args import parse_members, split_members
from normcl.utils.results import build_results, code_version, summary_table, write_results
from normcl.utils.run_setup import (
    build_model,
    check_disk_space,
    check_writable,
    member_datasets,
    resolve_device,
)
from normcl.utils.training import Interrupted, Trainer
from normcl.utils.wandb_logger import WandbLogger


def run(runs: Namespace | Sequence[Namespace]) -> list[dict[str, Any]]:
    """Train the runs as one stack (a run alone: a stack of one) and write each run's results file (partial results,
    with the step it stopped at, for a run whose loss turned non-finite); returns the results documents."""
    start = time.perf_counter()
    model, datasets = load(runs)
    return train(model, datasets, start)


def load(runs: Namespace | Sequence[Namespace]) -> tuple[ContinualModel, list[ContinualDataset]]:
    """The model and each member's dataset the runs' arguments ask for, on their device, before any training: what
    :func:`train` trains (``normcl.load_runner`` hands them to the user in between)."""
    members = [runs] if isinstance(runs, Namespace) else list(runs)
    first = members[0]
    if first.num_threads is not None:
        torch.set_num_threads(first.num_threads)
    device, started = resolve_device(first.device), datetime.now()
    for k, args in enumerate(members):
        args.device, args.setting = str(device), get_dataset_class(args.dataset).SETTING
        args.run_name = args.run_name or default_run_name(args, started) + (f"_member{k}" if len(members) > 1 else "")
    datasets = member_datasets(members, device)
    if not first.disable_log:
        check_writable(Path(first.results_path))
    model = build_model(members, datasets)
    if not first.disable_log:
        check_disk_space(Path(first.results_path), model, datasets[0])
    return model, datasets


def train(model: ContinualModel, datasets: list[ContinualDataset], start: float | None = None) -> list[dict[str, Any]]:
    """Train a model from :func:`load` (continuing from its checkpoint with ``--resume 1``) and write each member's
    results file; returns the results documents. ``start``: when the run began (default: now), for its timing."""
    start, code = time.perf_counter() if start is None else start, code_version()
    members = model.members.args
    first = members[0]
    ckpt = None if first.disable_log else checkpoint_file(results_file(first), stack=len(members) > 1)
    payload = load_checkpoint(ckpt, members, datasets[0].device) if first.resume and ckpt is not None else None
    loggers = [WandbLogger(args, concurrent=len(members) > 1) for args in members]
    trainer = Trainer(model, datasets, members, loggers, ckpt)
    if payload is not None:
        trainer.load_state(payload)
        runs_text = first.run_name if len(members) == 1 else f"the stack of {len(members)} runs"
        print(f"Resuming {runs_text} at task {model.current_task + 1}, step {trainer.pos.step}", flush=True)
    try:
        trainer.run()
    except BaseException:
        for logger in loggers:
            logger.finish(exit_code=1)
        raise
    documents = [_finish(trainer, k, time.perf_counter() - start, code) for k in range(len(members))]
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return documents


def _finish(trainer: Trainer, k: int, seconds: float, code: dict[str, Any]) -> dict[str, Any]:
    """Member ``k``'s results (or partial results, if it stopped) written, its logger closed."""
    args, logger = trainer.member_args[k], trainer.loggers[k]
    name = f"[{args.run_name}] " if len(trainer.member_args) > 1 else ""
    document = build_results(args, trainer.histories[k], trainer.model.forward_mode, seconds, code)
    out = results_file(args)
    if k in trainer.stopped:
        document["stopped"] = trainer.stopped[k].record()
        print(f"{name}error: {trainer.stopped[k]}; lower --lr or check the data", file=sys.stderr)
        out = partial_results_file(out)
        logger.finish(exit_code=3)
    else:
        logger.log_final(document["final"])
        logger.finish()
        print(f"{name}\n{summary_table(document)}" if name else summary_table(document))
    if not args.disable_log:
        write_results(out, document)
        print(f"{name}results written to {out}")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 3 a run's loss became non-finite (its partial results saved; the other
    members of a stack finished), 128 + N stopped by signal N."""
    try:
        shared, members = split_members(sys.argv[1:] if argv is None else argv)
        documents = run(parse_members(shared, members) if members else parse_args(shared))
        if any("stopped" in document for document in documents):
            return 3
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"{e}: checkpoint saved; continue with --resume 1", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
