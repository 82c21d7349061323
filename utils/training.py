"""The continual-learning loop: train on each task in turn, evaluate every seen task after each.

The loop knows no model or normalisation layer by name: it hands stream
batches to ``model.observe`` and task boundaries to the model's template
methods ``meta_begin_task`` / ``meta_end_task``, and reads the task from the
model's ``current_task`` (the model owns the index). Each task's data is one uint8 tensor on the training device,
shuffled by index and augmented in batches; the loss is read back from the
device only every ``LOSS_READ_EVERY`` steps, so the device never waits on the
progress bar. ``Trainer`` checkpoints its whole state so a killed run resumes
exactly (see ``normcl.utils.checkpoint``).

Every run is a stack of K members trained in lockstep (a run alone: K = 1): every dataset, history, logger and
argument list has one entry per member, the epoch order is each member's draw from its own generator, the batches
and losses carry the member as their first dimension, and a member whose loss turns non-finite stops alone
(``stopped``, with its partial results) while the others go on.
"""

from __future__ import annotations

import hashlib
import signal
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from normcl.datasets.utils.continual_dataset import ContinualDataset, TaskData
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.checkpoint import comparable_args, get_rng_state, save_checkpoint, set_rng_state
from normcl.utils.evaluation import anytime_point, evaluate_members, evaluation_subset
from normcl.utils.norm_diagnostics import diagnose
from normcl.utils.stream import batch_indices, epoch_order, n_batches
from normcl.utils.wandb_logger import WandbLogger

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
    loss_curve: list[list[float]] = field(default_factory=list)
    """``[step, loss]`` at every read of the loss (every ``LOSS_READ_EVERY``-th step of an epoch and its last)."""
    parameters_sha256: str | None = None
    """The trained network's parameters, digested when the run completes (``parameter_digest``)."""
    anytime: list[dict] = field(default_factory=list)
    """With ``--eval_every``: the anytime curve (``normcl.utils.metrics.Curve``) on each task's evaluation subset."""

    def __post_init__(self) -> None:
        if not self.class_il:
            self.class_il = [[None] * self.n_tasks for _ in range(self.n_tasks)]
            self.task_il = [[None] * self.n_tasks for _ in range(self.n_tasks)]


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

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NonFiniteLoss:
        return cls(int(record["step"]), int(record["task"]))


@dataclass
class Position:
    """Where the current task's stream stands: the next batch to train is ``batch`` of ``epoch``.

    The task itself is the model's ``current_task`` (the model owns the task index). ``order`` is each member's
    permutation of the epoch, ``[K, n]``.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    order: Tensor | None = None  # the shuffled indices of the current epoch, once it has started


class Trainer:
    """Runs the sequence of tasks, checkpointing so that a killed run resumes exactly.

    Checkpoints are written after every task and every ``--checkpoint_every``
    steps; SIGTERM and SIGINT save one at the next step boundary and stop.
    ``datasets``, ``args`` and ``loggers`` have one entry per member.
    """

    def __init__(
        self,
        model: ContinualModel,
        datasets: list[ContinualDataset],
        args: list[Namespace],
        loggers: list[WandbLogger],
        checkpoint: Path | None = None,
    ) -> None:
        self.model, self.checkpoint = model, checkpoint
        self.datasets, self.member_args, self.loggers = list(datasets), list(args), list(loggers)
        self.args = model.members.shared()
        """What the members share (the schedule, the evaluation, the output): one value for all of them."""
        self.n_tasks = self.datasets[0].N_TASKS
        self.histories = [History(self.n_tasks) for _ in self.datasets]
        self.stopped: dict[int, NonFiniteLoss] = {}
        self.pos = Position()
        self._signal: int | None = None
        self._subsets: list | None = None

    @property
    def active(self) -> list[int]:
        """The members still training."""
        return [k for k in range(len(self.datasets)) if k not in self.stopped]

    # -- state ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        buffer = self.model.buffer
        return {
            "args": [comparable_args(args) for args in self.member_args],
            "position": asdict(self.pos),
            "model": self.model.state_dict(),
            "optimizer": self.model.opt.state_dict(),
            "buffer": None if buffer is None else buffer.state_dict(),
            "history": [asdict(history) for history in self.histories],
            "rng": get_rng_state(),
            "generators": [g.get_state() for g in self.model.members.generators],
            "stopped": {str(k): e.record() for k, e in self.stopped.items()},
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.model.opt.load_state_dict(payload["optimizer"])
        if self.model.buffer is not None:
            self.model.buffer.load_state_dict(payload["buffer"])
        self.histories = [History(**h) for h in payload["history"]]
        self.pos = Position(**payload["position"])
        set_rng_state(payload["rng"])
        for generator, saved in zip(self.model.members.generators, payload["generators"], strict=True):
            generator.set_state(saved)
        for k, record in payload["stopped"].items():
            self._stop(int(k), NonFiniteLoss.from_record(record))

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
    def run(self) -> list[History]:
        """Train every task; returns each member's history."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.histories

    def _evaluate(self, tasks: list[int]) -> list[tuple[list[float], list[float]]]:
        args = self.args
        return evaluate_members(self.model, self.datasets, tasks, args.eval_batch_size, bool(args.debug_mode))

    def _evaluate_anytime(self, task: int, end: bool, first_bad: Tensor | None = None) -> None:
        """A point of each active member's anytime curve (``--eval_every``): its accuracy on the evaluation subset of
        every task seen so far; logged to wandb as ``anytime/...``. ``first_bad``: a member whose loss has turned
        non-finite since the last read (it stops at the next) gets no point."""
        if self._subsets is None:
            size, members = self.args.eval_subset, zip(self.datasets, self.member_args, strict=True)
            self._subsets = [evaluation_subset(d, size, a.seed) for d, a in members]
        args, tasks = self.args, list(range(task + 1))
        scores = evaluate_members(self.model, self.datasets, tasks, args.eval_batch_size, False, self._subsets)
        bad = [-1] * len(self.datasets) if first_bad is None else first_bad.tolist()
        for k in (k for k in self.active if bad[k] < 0):
            point = anytime_point(self.pos.step, task, end, scores[k])
            self.histories[k].anytime.append(point)
            values = {f"anytime/{s}_{j}": a for s in ("class_il", "task_il") for j, a in enumerate(point[s])}
            values |= {f"anytime/{s}_avg": sum(point[s]) / len(point[s]) for s in ("class_il", "task_il")}
            self.loggers[k].log(values, step=self.pos.step)

    def _run(self) -> None:
        args, n_tasks = self.args, self.n_tasks
        if self.pos.step == 0 and self.model.current_task == 0 and not args.ignore_other_metrics:
            for history, (c, ti) in zip(self.histories, self._evaluate(list(range(n_tasks))), strict=True):
                history.random_class_il, history.random_task_il = c, ti
        while self.model.current_task < n_tasks and self.active:
            t = self.model.current_task
            self.model.net.train()
            if self.pos.epoch == 0 and self.pos.batch == 0 and self.pos.order is None:
                if t > 0 and not args.ignore_other_metrics:  # a stopped member's history ends where it stopped
                    scores = self._evaluate([t])
                    for k in self.active:
                        (c,), (ti,) = scores[k]
                        self.histories[k].class_il[t - 1][t], self.histories[k].task_il[t - 1][t] = c, ti
                self.model.meta_begin_task(self.model.dataset)
            start = time.perf_counter()
            self._train_task(t)
            if not self.active:  # every member stopped: nothing left to evaluate or to resume
                break
            self.model.meta_end_task(self.model.dataset)
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            scores = self._evaluate(list(range(t + 1)))
            if args.eval_every:
                self._evaluate_anytime(t, end=True)
            eval_seconds = time.perf_counter() - start
            for k in self.active:
                self._record_task(k, t, scores[k], train_seconds, eval_seconds)
            self.pos = Position(step=self.pos.step)
            if self.model.current_task == n_tasks:
                for k in self.active:
                    self.histories[k].parameters_sha256 = parameter_digest(self.model.member_net(k))
            self.save()
            self._check_signal()

    def _record_task(
        self, k: int, t: int, scores: tuple[list[float], list[float]], train_seconds: float, eval_seconds: float
    ) -> None:
        """Member ``k``'s accuracies after task ``t``: history, printed report, logger, diagnostics."""
        (class_il, task_il), history, logger = scores, self.histories[k], self.loggers[k]
        history.train_seconds.append(train_seconds)
        history.eval_seconds.append(eval_seconds)
        history.class_il[t][: t + 1], history.task_il[t][: t + 1] = class_il, task_il
        print(f"\n[{self.member_args[k].run_name}]", end="")
        report_task(t, class_il, task_il)
        logger.log_task(t, class_il, task_il, self.pos.step)
        if self.args.diagnose_norm:
            diagnostics = diagnose(self.model.member_net(k), self.datasets[k], t, self.args.eval_batch_size)
            history.norm_diagnostics.append(diagnostics)
            logger.log({f"norm/{n}": v for n, v in diagnostics["summary"].items()}, step=self.pos.step)

    def _new_order(self, n: int) -> Tensor:
        """A new epoch's permutation, each member's from its own generator, ``[K, n]``."""
        return torch.stack([epoch_order(n, self.model.device, g) for g in self.model.members.generators])

    def _train_task(self, t: int) -> None:
        args, pos, data = self.args, self.pos, [dataset.task(t) for dataset in self.datasets]
        n = len(data[0].train_y)
        per_epoch = n_batches(n, args.batch_size)
        per_epoch = min(per_epoch, DEBUG_STEPS) if args.debug_mode else per_epoch
        bar = tqdm(
            total=per_epoch * args.n_epochs,
            initial=pos.epoch * per_epoch + pos.batch,
            desc=f"Task {t + 1}/{self.n_tasks} ({len(self.active)} of {len(data)} run(s))",
            disable=bool(args.non_verbose),
            unit="step",
        )
        first_bad = torch.full((len(data),), -1, dtype=torch.long, device=self.model.device)
        try:
            while pos.epoch < args.n_epochs and self.active:
                if pos.order is None:
                    pos.order = self._new_order(n)
                while pos.batch < per_epoch and self.active:
                    loss = self.train_step(data, batch_indices(pos.order, pos.batch, args.batch_size))
                    pos.batch += 1
                    pos.step += 1
                    bar.update(1)
                    first_bad = torch.where(torch.isfinite(loss.reshape(-1)) | (first_bad >= 0), first_bad, pos.step)
                    if pos.batch % LOSS_READ_EVERY == 0 or pos.batch == per_epoch:
                        self._read_loss(loss, first_bad, bar, t)
                    last = pos.batch == per_epoch and pos.epoch == args.n_epochs - 1  # the task's end evaluates
                    if args.eval_every and pos.step % args.eval_every == 0 and not last and self.active:
                        self._evaluate_anytime(t, end=False, first_bad=first_bad)
                    if args.checkpoint_every and pos.step % args.checkpoint_every == 0:
                        self.save()
                    self._check_signal()
                pos.epoch, pos.batch, pos.order = pos.epoch + 1, 0, None
        finally:
            bar.close()

    def train_step(self, data: list[TaskData], idx: Tensor) -> Tensor:
        """One step of the stream: gather each member's batch ``idx[k]`` of its own task data, augment it on the
        device, let the model learn from it; returns the members' losses, ``[K]``."""
        not_aug = torch.stack([d.train_x[i] for d, i in zip(data, idx, strict=True)])
        labels = torch.stack([d.train_y[i] for d, i in zip(data, idx, strict=True)])
        return self.model.observe(self.model.transform(not_aug), labels, not_aug)

    def _stop(self, k: int, error: NonFiniteLoss) -> None:
        self.stopped[k] = error
        self.model.opt.stop(k)

    def _read_loss(self, loss: Tensor, first_bad: Tensor, bar: tqdm, t: int) -> None:
        """The only host synchronisation of the loop: every ``LOSS_READ_EVERY`` steps and at epoch ends. A member
        whose loss turned non-finite stops (``NonFiniteLoss``, kept in ``stopped``); the others go on."""
        bad, values = first_bad.tolist(), loss.reshape(-1).tolist()
        for k in self.active:
            if bad[k] >= 0:
                self._stop(k, NonFiniteLoss(bad[k], t))
                continue
            self.histories[k].loss_curve.append([self.pos.step, values[k]])
            lr = self.member_args[k].lr
            self.loggers[k].log({"loss": values[k], "lr": lr, "task": t, "epoch": self.pos.epoch}, step=self.pos.step)
        if self.active:
            bar.set_postfix(loss=f"{sum(values[k] for k in self.active) / len(self.active):.4f}", refresh=False)


def parameter_digest(net: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in module order (whatever the memory layout): equal only if training was
    bit-identical."""
    digest = hashlib.sha256()
    for p in net.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def report_task(t: int, class_il: list[float], task_il: list[float]) -> None:
    """Print the accuracies after task ``t`` (always, even with ``--non_verbose``)."""
    mean_c = sum(class_il) / len(class_il)
    mean_t = sum(task_il) / len(task_il)
    print(f"\nAccuracy after task {t + 1}:\t[Class-IL]: {mean_c:.2f} %\t[Task-IL]: {mean_t:.2f} %")
    print("  per task (class-IL): " + " ".join(f"{a:6.2f}" for a in class_il))
    print("  per task (task-IL):  " + " ".join(f"{a:6.2f}" for a in task_il), flush=True)
