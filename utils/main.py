"""Run one continual-learning experiment: ``python utils/main.py --dataset seq-fmnist --model er_ace ...``.

Also runnable as ``python -m utils.main``. Bad input ends with a one-line
message and exit code 2, before anything is written. A checkpoint is kept
after every task (and every ``--checkpoint_every`` steps) until the results
file is written; ``--resume 1 --run_name NAME`` continues from it.

Stacked runs: ``python utils/main.py FLAGS --member "--seed 0 --kappa 0.4 --run_name A" --member "--seed 1 ..."``
trains each ``--member`` (the shared flags plus its own) as the same run it would be alone: its own class order, data
order, augmentation, buffer and draws (its generator, in the order of its run alone), arithmetic, results file and
wandb run. Every run is such a stack; without ``--member`` it has one member, and one ``--member`` is that same run.
The members train in lockstep through ``normcl.utils.training.Trainer``, so they must share everything that shapes a
step (dataset, model, norm, buffer size, batch size, epochs, network width, forward mode); ``utils/member_args.py``
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
from normcl.models.utils.members import SharedArgs
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


def run(runs: Sequence[Namespace]) -> list[dict[str, Any]]:
    """Train the runs as one stack (a run alone: a stack of one) and write each run's results file (partial results,
    with the step it stopped at, for a run whose loss turned non-finite); returns the results documents."""
    start = time.perf_counter()
    model, datasets = load(runs)
    return train(model, datasets, start)


def load(runs: Sequence[Namespace]) -> tuple[ContinualModel, list[ContinualDataset]]:
    """The model and each member's dataset the runs' arguments ask for, on their device, before any training: what
    :func:`train` trains (``normcl.load_runner`` hands them to the user in between)."""
    shared = SharedArgs(runs)
    if shared.num_threads is not None:
        torch.set_num_threads(shared.num_threads)
    device, started = resolve_device(shared.device), datetime.now()
    for args in runs:
        args.device, args.setting = str(device), get_dataset_class(args.dataset).SETTING
        args.run_name = args.run_name or default_run_name(args, started)
    datasets = member_datasets(list(runs), device)
    print(datasets[0].data_line(), flush=True)
    if not shared.disable_log:
        check_writable(Path(shared.results_path))
    model = build_model(list(runs), datasets)
    if not shared.disable_log:
        check_disk_space(Path(shared.results_path), model, datasets[0])
    return model, datasets


def train(model: ContinualModel, datasets: list[ContinualDataset], start: float | None = None) -> list[dict[str, Any]]:
    """Train a model from :func:`load` (continuing from its checkpoint with ``--resume 1``) and write each member's
    results file; returns the results documents. ``start``: when the run began (default: now), for its timing."""
    start, code = time.perf_counter() if start is None else start, code_version()
    runs, shared = model.members.args, model.members.shared()
    ckpt = None if shared.disable_log else checkpoint_file([results_file(args) for args in runs])
    payload = load_checkpoint(ckpt, runs, datasets[0].device) if shared.resume and ckpt is not None else None
    loggers = [WandbLogger(args) for args in runs]
    trainer = Trainer(model, datasets, runs, loggers, ckpt)
    if payload is not None:
        trainer.load_state(payload)
        names = ", ".join(args.run_name for args in runs)
        print(f"Resuming {names} at task {model.current_task + 1}, step {trainer.pos.step}", flush=True)
    try:
        trainer.run()
    except BaseException:
        for logger in loggers:
            logger.finish(exit_code=1)
        raise
    documents = [_finish(trainer, k, time.perf_counter() - start, code) for k in range(len(runs))]
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return documents


def _finish(trainer: Trainer, k: int, seconds: float, code: dict[str, Any]) -> dict[str, Any]:
    """Member ``k``'s results (or partial results, if it stopped) written, its logger closed."""
    args, logger = trainer.member_args[k], trainer.loggers[k]
    dataset, forward_mode = trainer.datasets[k], trainer.model.forward_mode
    document = build_results(args, trainer.histories[k], forward_mode, seconds, code, dataset.data_record())
    out = results_file(args)
    if k in trainer.stopped:
        document["stopped"] = trainer.stopped[k].record()
        print(f"[{args.run_name}] error: {trainer.stopped[k]}; lower --lr or check the data", file=sys.stderr)
        out = partial_results_file(out)
        logger.finish(exit_code=3)
    else:
        logger.log_final(document["final"])
        logger.finish()
        print(f"[{args.run_name}]\n{summary_table(document)}")
    if not args.disable_log:
        write_results(out, document)
        print(f"[{args.run_name}] results written to {out}")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 3 a run's loss became non-finite (its partial results saved; the other
    members of a stack finished), 128 + N stopped by signal N."""
    try:
        shared, members = split_members(sys.argv[1:] if argv is None else argv)
        documents = run(parse_members(shared, members))
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
