"""Stacked runs: K runs that differ only in their seed and hyper-parameters, trained in one process as one network.

``python utils/main.py FLAGS --member "--seed 0 --kappa 0.4 --run_name A" --member "--seed 1 ..."`` trains each
``--member`` (the shared flags plus its own) as the same run it would be alone: its own class order, data order,
augmentation, buffer and draws (its generator, in the order of its run alone), arithmetic, results file (under its
own name, in the usual schema) and wandb run. The members train in lockstep through ``utils.training.Trainer``, so
they must share everything that shapes a step (dataset, model, norm, buffer size, batch size, epochs, network width,
forward mode); ``utils/args.py`` checks that. A member whose loss turns NaN or infinite stops with its partial
results, and the others go on. The stack checkpoints as a run does (``{first member}.stack.ckpt``), so ``kill -9``
and ``--resume 1`` with the same command continue every member exactly.
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datasets import get_dataset_class
from datasets.utils.continual_dataset import ContinualDataset
from models import MODELS
from models.utils.continual_model import ContinualModel
from models.utils.members import Members
from models.utils.stacking import StackedNet
from utils.checkpoint import load_checkpoint
from utils.core.errors import UserError
from utils.core.run_files import checkpoint_file, partial_results_file, results_file
from utils.results import build_results, code_version, summary_table, write_results
from utils.run_setup import (
    apply_speed_options,
    build_network,
    check_writable,
    default_run_name,
    resolve_device,
    set_seed,
)
from utils.training import Trainer, check_trainable
from utils.wandb_logger import WandbLogger


def member_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator a member's run alone would draw its stream from, just after building its network: the CPU's
    global state as it is now, or on a GPU a fresh one of the seed (initialisation draws only on the CPU)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    return torch.Generator(device).manual_seed(seed)


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


def build_stacked_model(
    members: list[Namespace], datasets: list[ContinualDataset], device: torch.device
) -> ContinualModel:
    """The members' networks, each built as its run alone builds it (its seed), stacked, in the model."""
    first, nets, generators = members[0], [], []
    for args, dataset in zip(members, datasets, strict=True):
        set_seed(args.seed)
        nets.append(build_network(args, dataset))
        generators.append(member_generator(device, args.seed))
    try:
        net = StackedNet(nets, channels_last=bool(first.channels_last))
    except ValueError as e:
        raise UserError(f"the members cannot be stacked: {e}") from None
    apply_speed_options(net, first)
    return MODELS.get(first.model)(net, F.cross_entropy, first, datasets[0], Members(members, generators)).to(device)


def run_stack(members: list[Namespace]) -> list[dict[str, Any]]:
    """Train the stacked members; write each member's results (or partial results) file; return the documents."""
    start, code, first = time.perf_counter(), code_version(), members[0]
    if first.num_threads is not None:
        torch.set_num_threads(first.num_threads)
    device = resolve_device(first.device)
    for k, args in enumerate(members):
        args.device, args.setting = str(device), get_dataset_class(args.dataset).SETTING
        args.run_name = args.run_name or f"{default_run_name(args)}_member{k}"
    datasets = member_datasets(members, device)
    ckpt = None if first.disable_log else checkpoint_file(results_file(first), stack=True)
    if not first.disable_log:
        check_writable(Path(first.results_path))
    payload = load_checkpoint(ckpt, members, device) if first.resume and ckpt is not None else None
    model = build_stacked_model(members, datasets, device)
    loggers = [WandbLogger(args, concurrent=len(members) > 1) for args in members]
    trainer = Trainer(model, datasets, members, loggers, ckpt)
    if payload is not None:
        trainer.load_state(payload)
        print(f"Resuming the stack of {len(members)} runs at task {model.current_task + 1}, step {trainer.pos.step}")
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
    document = build_results(args, trainer.histories[k], trainer.model.forward_mode, seconds, code)
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
