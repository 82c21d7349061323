"""Stacked runs: K runs that differ only in their seed and hyper-parameters, trained in one process as one network.

``python utils/main.py FLAGS --member "--seed 0 --kappa 0.4 --run_name A" --member "--seed 1 ..."`` trains each
``--member`` (the shared flags plus its own) as the same run it would be alone: its own class order, data order,
augmentation, buffer and draws (its generator, in the order of its run alone), arithmetic, results file (under its
own name, in the usual schema) and wandb run. Members train in lockstep, so they must share everything that shapes
a step (dataset, model, norm, buffer size, batch size, epochs, network width, forward mode); ``utils/args.py`` checks
that. A member whose loss turns NaN or infinite stops with its partial results, and the others go on.
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from datasets import get_dataset_class
from datasets.utils.continual_dataset import ContinualDataset
from models import MODELS
from models.utils.continual_model import ContinualModel
from models.utils.members import Members
from models.utils.stacking import StackedNet
from utils.core.errors import UserError
from utils.norm_diagnostics import diagnose
from utils.results import build_results, code_version, partial_results_file, results_file, summary_table, write_results
from utils.run_setup import build_network, check_writable, default_run_name, resolve_device, set_seed
from utils.stream import batch_indices, epoch_order, n_batches
from utils.training import DEBUG_STEPS, LOSS_READ_EVERY, History, NonFiniteLoss, check_trainable, report_task
from utils.wandb_logger import WandbLogger


def member_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator a member's run alone would draw its stream from, just after building its network: the CPU's
    global state as it is now, or on a GPU a fresh one of the seed (initialisation draws only on the CPU)."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    return torch.Generator(device).manual_seed(seed)


def _lockstep(datasets: list[ContinualDataset]) -> None:
    """Members train and evaluate in lockstep: every task must have the same sizes for all of them."""
    for t in range(datasets[0].N_TASKS):
        sizes = {(len(d.task(t).train_y), len(d.task(t).test_y)) for d in datasets}
        if len(sizes) > 1:
            raise UserError(
                f"the members' task {t + 1} differs in size between their class orders ({sorted(sizes)}); "
                "stack only members whose tasks have equal sizes (e.g. a balanced dataset or one --seed)"
            )


class StackTrainer:
    """The loop of ``utils.training.Trainer`` for a stacked model, each member with its own history and logger."""

    def __init__(self, model: ContinualModel, datasets: list[ContinualDataset], loggers: list[WandbLogger]) -> None:
        assert model.members is not None
        self.model, self.datasets, self.loggers = model, datasets, loggers
        self.members = model.members
        self.args = self.members.args[0]
        self.histories = [History(datasets[0].N_TASKS) for _ in datasets]
        self.stopped: dict[int, NonFiniteLoss] = {}
        self.step = 0

    @property
    def active(self) -> list[int]:
        return [k for k in range(self.members.count) if k not in self.stopped]

    @torch.no_grad()
    def evaluate(self, tasks: list[int]) -> list[tuple[list[float], list[float]]]:
        """Each member's class-IL and task-IL accuracy (percent) on its own test sets of ``tasks``."""
        model, bs, k = self.model, self.args.eval_batch_size, self.members.count
        was_training = model.net.training
        model.net.eval()
        scores: list[tuple[list[float], list[float]]] = [([], []) for _ in range(k)]
        for t in tasks:
            data = [d.task(t) for d in self.datasets]
            lo, hi = self.datasets[0].task_classes(t)
            correct = torch.zeros(k, 2, dtype=torch.long, device=model.device)
            n = min(len(data[0].test_y), bs) if self.args.debug_mode else len(data[0].test_y)
            for start in range(0, n, bs):
                y = torch.stack([d.test_y[start : start + bs] for d in data])
                x = torch.stack([d.test_x[start : start + bs] for d in data])
                out = model(self.datasets[0].test_transform(x))
                correct[:, 0] += (out.argmax(-1) == y).sum(1)
                correct[:, 1] += (out[..., lo:hi].argmax(-1) + lo == y).sum(1)
            for member, (c, ti) in enumerate((correct.double() * 100.0 / max(n, 1)).tolist()):
                scores[member][0].append(c)
                scores[member][1].append(ti)
        model.net.train(was_training)
        return scores

    def run(self) -> list[History]:
        args, n_tasks, model = self.args, self.datasets[0].N_TASKS, self.model
        if not args.ignore_other_metrics:
            for history, (c, ti) in zip(self.histories, self.evaluate(list(range(n_tasks))), strict=True):
                history.random_class_il, history.random_task_il = c, ti
        while model.current_task < n_tasks and self.active:
            t = model.current_task
            model.net.train()
            if t > 0 and not args.ignore_other_metrics:
                for history, ((c,), (ti,)) in zip(self.histories, self.evaluate([t]), strict=True):
                    history.class_il[t - 1][t], history.task_il[t - 1][t] = c, ti
            model.meta_begin_task(self.datasets[0])
            start = time.perf_counter()
            self._train_task(t)
            model.meta_end_task(self.datasets[0])
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            scores = self.evaluate(list(range(t + 1)))
            eval_seconds = time.perf_counter() - start
            for k in self.active:
                history, (class_il, task_il) = self.histories[k], scores[k]
                history.train_seconds.append(seconds)
                history.eval_seconds.append(eval_seconds)
                history.class_il[t][: t + 1], history.task_il[t][: t + 1] = class_il, task_il
                print(f"\n[{self.members.args[k].run_name}]", end="")
                report_task(t, class_il, task_il)
                self.loggers[k].log_task(t, class_il, task_il, self.step)
                if args.diagnose_norm:
                    diagnostics = diagnose(model.net.member(k), self.datasets[k], t, args.eval_batch_size)
                    history.norm_diagnostics.append(diagnostics)
                    self.loggers[k].log({f"norm/{n}": v for n, v in diagnostics["summary"].items()}, step=self.step)
        return self.histories

    def _train_task(self, t: int) -> None:
        args, model = self.args, self.model
        data = [d.task(t) for d in self.datasets]
        n = len(data[0].train_y)
        per_epoch = (
            min(n_batches(n, args.batch_size), DEBUG_STEPS) if args.debug_mode else n_batches(n, args.batch_size)
        )
        desc = f"Task {t + 1}/{self.datasets[0].N_TASKS} ({len(self.active)} runs)"
        bar = tqdm(total=per_epoch * args.n_epochs, desc=desc, disable=bool(args.non_verbose), unit="step")
        first_bad = torch.full((self.members.count,), -1, dtype=torch.long, device=model.device)
        try:
            for _ in range(args.n_epochs):
                orders = [epoch_order(n, model.device, g) for g in self.members.generators]
                for b in range(per_epoch):
                    idx = [batch_indices(order, b, args.batch_size) for order in orders]
                    not_aug = torch.stack([d.train_x[i] for d, i in zip(data, idx, strict=True)])
                    labels = torch.stack([d.train_y[i] for d, i in zip(data, idx, strict=True)])
                    loss = model.observe(model.transform(not_aug), labels, not_aug)
                    self.step += 1
                    bar.update(1)
                    first_bad = torch.where(torch.isfinite(loss) | (first_bad >= 0), first_bad, self.step)
                    if (b + 1) % LOSS_READ_EVERY == 0 or b + 1 == per_epoch:
                        self._read_losses(loss, first_bad, bar, t)
                        if not self.active:
                            return
        finally:
            bar.close()

    def _read_losses(self, loss: Tensor, first_bad: Tensor, bar: tqdm, t: int) -> None:
        """The only host synchronisation of the loop: stop members that diverged, log the others."""
        bad, values = first_bad.tolist(), loss.tolist()
        for k in self.active:
            if bad[k] >= 0:
                self.stopped[k] = NonFiniteLoss(bad[k], t)
                self.model.opt.stop(k)
                continue
            self.loggers[k].log({"loss": values[k], "lr": self.members.args[k].lr, "task": t}, step=self.step)
        if self.active:
            bar.set_postfix(loss=f"{sum(values[k] for k in self.active) / len(self.active):.4f}", refresh=False)


def run_stack(members: list[Namespace]) -> list[dict[str, Any]]:
    """Train the stacked members; write each member's results (or partial results) file; return the documents."""
    start, code, first = time.perf_counter(), code_version(), members[0]
    if first.num_threads is not None:
        torch.set_num_threads(first.num_threads)
    device = resolve_device(first.device)
    dataset_cls = get_dataset_class(first.dataset)
    for k, args in enumerate(members):
        args.device, args.setting = str(device), dataset_cls.SETTING
        args.run_name = args.run_name or f"{default_run_name(args)}_member{k}"
    datasets: list[ContinualDataset] = []
    for args in members:
        dataset = dataset_cls(args, device)
        same = next((d for d in datasets if (d.class_order == dataset.class_order).all()), None)
        datasets.append(same or dataset)
        if same is None:
            dataset.prepare()
            check_trainable(dataset)
    _lockstep(datasets)
    if not first.disable_log:
        check_writable(results_file(first).parents[3])
    nets, generators = [], []
    for args, dataset in zip(members, datasets, strict=True):
        set_seed(args.seed)
        nets.append(build_network(args, dataset))
        generators.append(member_generator(device, args.seed))
    try:
        net = StackedNet(nets, channels_last=bool(first.channels_last))
    except ValueError as e:
        raise UserError(f"the members cannot be stacked: {e}") from None
    if first.channels_last:
        net.to(memory_format=torch.channels_last)
    if first.compile:
        net.compile()
    stack = Members(members, generators)
    model = MODELS.get(first.model)(net, F.cross_entropy, first, datasets[0], stack).to(device)
    loggers = [WandbLogger(args, concurrent=len(members) > 1) for args in members]
    trainer = StackTrainer(model, datasets, loggers)
    try:
        histories = trainer.run()
    except BaseException:
        for logger in loggers:
            logger.finish(exit_code=1)
        raise
    documents = []
    for k, (args, history) in enumerate(zip(members, histories, strict=True)):
        document = build_results(args, history, model.forward_mode, time.perf_counter() - start, code)
        out = results_file(args)
        if k in trainer.stopped:
            document["stopped"] = trainer.stopped[k].record()
            print(f"[{args.run_name}] error: {trainer.stopped[k]}; lower --lr or check the data", file=sys.stderr)
            out = partial_results_file(out)
            loggers[k].finish(exit_code=3)
        else:
            loggers[k].log_final(document["final"])
            loggers[k].finish()
            print(f"[{args.run_name}]\n{summary_table(document)}")
        if not args.disable_log:
            write_results(out, document)
            print(f"[{args.run_name}] results written to {out}")
        documents.append(document)
    return documents
