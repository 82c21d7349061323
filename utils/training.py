"""The continual-learning loop: train on each task in turn, evaluate every seen task after each.

The loop knows no model or normalisation layer by name: it hands stream
batches to ``model.observe`` and task boundaries to the model's template
methods ``meta_begin_task`` / ``meta_end_task``, and reads the task from the
model's ``current_task`` (the model owns the index). Each task's data is one uint8 tensor on the training device,
shuffled by index and augmented in batches; the loss is read back from the
device only every ``LOSS_READ_EVERY`` steps, so the device never waits on the
progress bar. ``Trainer`` checkpoints its whole state so a killed run resumes
exactly (see ``utils.checkpoint``).
"""

from __future__ import annotations

import signal
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from datasets.utils.continual_dataset import ContinualDataset, TaskData
from models.utils.continual_model import ContinualModel
from utils.checkpoint import comparable_args, get_rng_state, save_checkpoint, set_rng_state
from utils.core.errors import UserError
from utils.norm_diagnostics import diagnose
from utils.stream import batch_indices, epoch_order, n_batches
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


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved at the step boundary. ``exit_code`` = 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite at ``step`` (1-based, over the run) of ``task`` (0-based)."""

    def __init__(self, step: int, task: int) -> None:
        super().__init__(f"the loss became NaN or infinite at step {step} (task {task + 1})")
        self.step, self.task = step, task

    def record(self) -> dict[str, Any]:
        """The ``stopped`` entry of the partial results file."""
        return {"reason": "non-finite loss", "task": self.task, "step": self.step}


@dataclass
class Position:
    """Where the current task's stream stands: the next batch to train is ``batch`` of ``epoch``.

    The task itself is the model's ``current_task`` (the model owns the task index).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    order: Tensor | None = None  # the shuffled indices of the current epoch, once it has started

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        """From a checkpoint; the ``task`` entry of checkpoints before the model owned the index is dropped."""
        return cls(**{k: v for k, v in state.items() if k != "task"})


class Trainer:
    """Runs the sequence of tasks, checkpointing so that a killed run resumes exactly.

    Checkpoints are written after every task and every ``--checkpoint_every``
    steps; SIGTERM and SIGINT save one at the next step boundary and stop.
    """

    def __init__(
        self,
        model: ContinualModel,
        dataset: ContinualDataset,
        args: Namespace,
        logger: WandbLogger,
        checkpoint: Path | None = None,
    ) -> None:
        self.model, self.dataset, self.args, self.logger = model, dataset, args, logger
        self.checkpoint = checkpoint
        self.history = History(dataset.N_TASKS)
        self.pos = Position()
        self._signal: int | None = None

    # -- state ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        buffer = self.model.buffer
        return {
            "args": comparable_args(self.args),
            "position": asdict(self.pos),
            "model": self.model.state_dict(),
            "optimizer": self.model.opt.state_dict(),
            "buffer": None if buffer is None else buffer.state_dict(),
            "history": asdict(self.history),
            "rng": get_rng_state(),
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.model.opt.load_state_dict(payload["optimizer"])
        if self.model.buffer is not None:
            self.model.buffer.load_state_dict(payload["buffer"])
        self.history = History(**payload["history"])
        self.pos = Position.from_state(payload["position"])
        set_rng_state(payload["rng"])

    def save(self) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self.state())

    # -- signals --------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def _check_signal(self) -> None:
        if self._signal is not None:
            self.save()
            raise Interrupted(self._signal)

    # -- loop -----------------------------------------------------------------------------------------------
    def run(self) -> History:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.history

    def _evaluate(self, tasks: list[int]) -> tuple[list[float], list[float]]:
        return evaluate(self.model, self.dataset, tasks, self.args.eval_batch_size, bool(self.args.debug_mode))

    def _run(self) -> None:
        args, history, n_tasks = self.args, self.history, self.dataset.N_TASKS
        if self.pos.step == 0 and self.model.current_task == 0 and not args.ignore_other_metrics:
            history.random_class_il, history.random_task_il = self._evaluate(list(range(n_tasks)))
        while self.model.current_task < n_tasks:
            t = self.model.current_task
            self.model.net.train()
            if self.pos.epoch == 0 and self.pos.batch == 0 and self.pos.order is None:
                if t > 0 and not args.ignore_other_metrics:
                    (c,), (ti,) = self._evaluate([t])
                    history.class_il[t - 1][t], history.task_il[t - 1][t] = c, ti
                self.model.meta_begin_task(self.dataset)
            start = time.perf_counter()
            self._train_task(t)
            self.model.meta_end_task(self.dataset)
            history.train_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            class_il, task_il = self._evaluate(list(range(t + 1)))
            history.eval_seconds.append(time.perf_counter() - start)
            history.class_il[t][: t + 1] = class_il
            history.task_il[t][: t + 1] = task_il
            report_task(t, class_il, task_il)
            self.logger.log_task(t, class_il, task_il, self.pos.step)
            if args.diagnose_norm:
                diagnostics = diagnose(self.model.net, self.dataset, t, args.eval_batch_size)
                history.norm_diagnostics.append(diagnostics)
                self.logger.log({f"norm/{k}": v for k, v in diagnostics["summary"].items()}, step=self.pos.step)
            self.pos = Position(step=self.pos.step)
            self.save()
            self._check_signal()

    def _train_task(self, t: int) -> None:
        args, pos, data = self.args, self.pos, self.dataset.task(t)
        n = len(data.train_y)
        per_epoch = n_batches(n, args.batch_size)
        per_epoch = min(per_epoch, DEBUG_STEPS) if args.debug_mode else per_epoch
        bar = tqdm(
            total=per_epoch * args.n_epochs,
            initial=pos.epoch * per_epoch + pos.batch,
            desc=f"Task {t + 1}/{self.dataset.N_TASKS}",
            disable=bool(args.non_verbose),
            unit="step",
        )
        first_bad = torch.full((), -1, dtype=torch.long, device=self.dataset.device)
        try:
            while pos.epoch < args.n_epochs:
                if pos.order is None:
                    pos.order = epoch_order(n, self.dataset.device)
                while pos.batch < per_epoch:
                    loss = self.train_step(data, batch_indices(pos.order, pos.batch, args.batch_size))
                    pos.batch += 1
                    pos.step += 1
                    bar.update(1)
                    first_bad = torch.where(torch.isfinite(loss) | (first_bad >= 0), first_bad, pos.step)
                    if pos.batch % LOSS_READ_EVERY == 0 or pos.batch == per_epoch:
                        self._read_loss(loss, first_bad, bar, t)
                    if args.checkpoint_every and pos.step % args.checkpoint_every == 0:
                        self.save()
                    self._check_signal()
                pos.epoch, pos.batch, pos.order = pos.epoch + 1, 0, None
        finally:
            bar.close()

    def train_step(self, data: TaskData, idx: Tensor) -> Tensor:
        """One step of the stream: gather the batch, augment it on the device, let the model learn from it."""
        not_aug = data.train_x[idx]
        return self.model.observe(self.dataset.train_transform(not_aug), data.train_y[idx], not_aug)

    def _read_loss(self, loss: Tensor, first_bad: Tensor, bar: tqdm, t: int) -> None:
        """The only host synchronisation of the loop: every ``LOSS_READ_EVERY`` steps and at epoch ends."""
        bad = int(first_bad)
        if bad >= 0:
            raise NonFiniteLoss(bad, t)
        value = float(loss)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        self.logger.log({"loss": value, "lr": self.args.lr, "task": t, "epoch": self.pos.epoch}, step=self.pos.step)


def report_task(t: int, class_il: list[float], task_il: list[float]) -> None:
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
            raise UserError(f"task {t + 1} of {dataset.name} has no training or test samples; check the data files")
