"""The continual-learning loop: train on each task in turn, evaluate every seen task after each.

The loop knows no model or normalisation layer by name: it hands stream
batches to ``model.observe`` and task boundaries to ``begin_task`` /
``end_task``. Each task's data is one uint8 tensor on the training device,
shuffled by index and augmented in batches; the loss is read back from the
device only every ``LOSS_READ_EVERY`` steps, so the device never waits on the
progress bar.
"""

from __future__ import annotations

import math
import time
from argparse import Namespace
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from datasets.utils.continual_dataset import ContinualDataset
from models.utils.continual_model import ContinualModel
from utils.errors import UserError
from utils.norm_diagnostics import diagnose
from utils.stream import iterate_batches
from utils.wandb_logger import WandbLogger

LOSS_READ_EVERY = 25
DEBUG_STEPS = 5


@dataclass
class History:
    """Everything measured during a run; ``results.build_results`` turns it into the results file."""

    n_tasks: int
    class_il: list[list[float | None]] = field(default_factory=list)
    task_il: list[list[float | None]] = field(default_factory=list)
    random_class_il: list[float] | None = None
    random_task_il: list[float] | None = None
    train_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    norm_diagnostics: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.class_il:
            self.class_il = [[None] * self.n_tasks for _ in range(self.n_tasks)]
            self.task_il = [[None] * self.n_tasks for _ in range(self.n_tasks)]


@torch.no_grad()
def evaluate(
    model: ContinualModel, dataset: ContinualDataset, tasks: list[int], batch_size: int, debug: bool = False
) -> tuple[list[float], list[float]]:
    """Class-IL and task-IL accuracy (percent) of ``model`` on the test sets of ``tasks``.

    ``debug`` (``--debug_mode``) scores only the first batch of each test set, as mammoth's debug mode.
    """
    was_training = model.net.training
    model.net.eval()
    class_il, task_il = [], []
    for t in tasks:
        data = dataset.task(t)
        lo, hi = dataset.task_classes(t)
        correct = torch.zeros(2, dtype=torch.long, device=dataset.device)
        n = min(len(data.test_y), batch_size) if debug else len(data.test_y)
        for start in range(0, n, batch_size):
            y = data.test_y[start : start + batch_size]
            out = model(dataset.test_transform(data.test_x[start : start + batch_size]))
            correct[0] += (out.argmax(1) == y).sum()
            correct[1] += (out[:, lo:hi].argmax(1) + lo == y).sum()
        n = max(n, 1)
        c, ti = (correct.double() * 100.0 / n).tolist()
        class_il.append(c)
        task_il.append(ti)
    model.net.train(was_training)
    return class_il, task_il


def train(model: ContinualModel, dataset: ContinualDataset, args: Namespace, logger: WandbLogger) -> History:
    """Run the whole sequence of tasks and return the accuracy history."""
    n_tasks = dataset.N_TASKS
    history = History(n_tasks)
    if not args.ignore_other_metrics:
        history.random_class_il, history.random_task_il = evaluate(
            model, dataset, list(range(n_tasks)), args.eval_batch_size, bool(args.debug_mode)
        )
    step = 0
    for t in range(n_tasks):
        model.net.train()
        data = dataset.task(t)
        if t > 0 and not args.ignore_other_metrics:
            (c,), (ti,) = evaluate(model, dataset, [t], args.eval_batch_size, bool(args.debug_mode))
            history.class_il[t - 1][t], history.task_il[t - 1][t] = c, ti
        model.begin_task(dataset)
        start = time.perf_counter()
        n_batches = math.ceil(len(data.train_y) / args.batch_size)
        total = DEBUG_STEPS if args.debug_mode else n_batches * args.n_epochs
        bar = tqdm(total=total, desc=f"Task {t + 1}/{n_tasks}", disable=bool(args.non_verbose), unit="step")
        done = 0
        for epoch in range(args.n_epochs):
            for idx in iterate_batches(len(data.train_y), args.batch_size, dataset.device):
                if done == total:
                    break
                not_aug = data.train_x[idx]
                loss = model.observe(dataset.train_transform(not_aug), data.train_y[idx], not_aug)
                done += 1
                step += 1
                bar.update(1)
                if done % LOSS_READ_EVERY == 0 or done == total:
                    value = float(loss)
                    if not math.isfinite(value):
                        bar.close()
                        raise FloatingPointError(f"the loss became {value} in task {t + 1}, epoch {epoch}, step {done}")
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                    logger.log({"loss": value, "lr": args.lr, "task": t, "epoch": epoch}, step=step)
        bar.close()
        model.end_task(dataset)
        history.train_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        class_il, task_il = evaluate(model, dataset, list(range(t + 1)), args.eval_batch_size, bool(args.debug_mode))
        history.eval_seconds.append(time.perf_counter() - start)
        history.class_il[t][: t + 1] = class_il
        history.task_il[t][: t + 1] = task_il
        report_task(t, class_il, task_il, args)
        logger.log_task(t, class_il, task_il, step)
        if args.diagnose_norm:
            diagnostics = diagnose(model.net, dataset, t, args.eval_batch_size)
            history.norm_diagnostics.append(diagnostics)
            logger.log({f"norm/{k}": v for k, v in diagnostics["summary"].items()}, step=step)
    return history


def report_task(t: int, class_il: list[float], task_il: list[float], args: Namespace) -> None:
    """Print the accuracies after task ``t`` (always, even with ``--non_verbose``)."""
    mean_c = sum(class_il) / len(class_il)
    mean_t = sum(task_il) / len(task_il)
    print(f"\nAccuracy after task {t + 1}:\t[Class-IL]: {mean_c:.2f} %\t[Task-IL]: {mean_t:.2f} %")
    print("  per task (class-IL): " + " ".join(f"{a:6.2f}" for a in class_il))
    print("  per task (task-IL):  " + " ".join(f"{a:6.2f}" for a in task_il), flush=True)


def check_trainable(dataset: ContinualDataset) -> None:
    """Fail before training if a task has no training data (e.g. a tiny ``--samples_per_class``)."""
    for t in range(dataset.N_TASKS):
        if len(dataset.task(t).train_y) == 0 or len(dataset.task(t).test_y) == 0:
            raise UserError(f"task {t + 1} of {dataset.NAME} has no training or test samples; check the data files")
