"""This project's norms inside Avalanche (``avalanche-lib`` 0.6, Carta et al., CVPR-W 2023, arXiv 2302.01766).

Every norm is one ``convert_norm`` call on the strategy's model (create the optimiser after it); a *task-aware* one
(AdaB²N, Lyu et al., NeurIPS 2023) also needs each sample's task, its regulariser in the loss and the task boundaries,
which :class:`TaskAwareNormPlugin` supplies through the protocol of ``models/utils/task_aware.py``, as
``ContinualModel`` does in this framework::

    model = convert_norm(model, "AdaB2N", num_tasks=5, kappa=0.4, lambd=0.1)
    strategy = ER_ACE(model=model, optimizer=SGD(model.parameters(), lr=0.03), plugins=[TaskAwareNormPlugin()])

Avalanche's strategies assemble their batches differently, so the plugin hooks the model itself: before every
training forward it finds the batch (``strategy.mb_x`` — with DER's replay already concatenated into it — or ER-ACE's
separate ``strategy.mb_buffer_x``), maps each label to its task and hands the ids to the layers; after it, it
collects the layers' regularisers. Nothing of the strategies or their buffers changes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training import DER, ER_ACE
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from normcl.datasets.utils.continual_dataset import ContinualDataset, first_per_class
from normcl.models.utils.task_aware import NormLosses, TaskAwareNorm, task_aware_layers, task_counts

NAME = "TaskAwareNormPlugin"
SCHEDULES = {
    "replay": "only in iterations with a replay part (a buffer forward, or replayed samples of earlier experiences)",
    "after_first": "in every iteration but the stream's first",
    "always": "in every iteration",
}
"""When the regulariser joins the loss (from the layers' ``ada_t0`` on): :func:`reference_schedule` picks one."""


def reference_schedule(strategy: Any) -> str:
    """The schedule of the strategy's reference AdaB²N model. ER-ACE (``er_ace_ada.py``): ``replay``, its first task
    (no replay, in Avalanche's ER_ACE too) is cross-entropy alone. DER (``derpp_ada.py``): ``after_first``, the
    reference's first step (empty buffer) is plain and every later one regularised, its reservoir buffer filled from
    the first step on; Avalanche's DER fills its buffer only after each experience, so it replays from the second
    experience on, and the plugin follows the reference rather than wait for it. Others (as SGD's reference):
    ``always``."""
    if isinstance(strategy, ER_ACE):
        return "replay"
    return "after_first" if isinstance(strategy, DER) else "always"


def _ignore(*_: Any) -> None:
    """What a copied model's hooks do."""


class _SharedHook:
    """A model hook whose deep copy does nothing: a copy of the model (LwF's teacher, a snapshot) must neither
    deep-copy the plugin, and with it the whole strategy, nor keep a reference to it (``torch.save`` of the copy)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        self.fn(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedHook:
        return _SharedHook(_ignore)


class TaskAwareNormPlugin(SupervisedPlugin):
    """Drives the task-aware norm layers of an Avalanche strategy's model, as ``ContinualModel`` does here.

    * **Task of a sample** (stream and replay alike): the experience in which its class was first seen, counted in
      experiences trained (class-incremental streams carry task label 0; the labels are those of ``mb_y``, after
      any remapping of the benchmark). A class that reappears in a later experience is an error.
    * **Regulariser**: ``norm_loss_weight(task) · norm_loss`` of every layer and every training forward since the
      last backward (ER-ACE: stream and buffer forwards) is added to ``strategy.loss`` before the backward pass, i.e.
      ``lambd · Σ norm_loss`` from ``ada_t0`` on, in the iterations of the strategy's reference model
      (:func:`reference_schedule`: ER-ACE from its second experience, DER from its second iteration, others in
      every one). ``only_when_replaying=True`` adds it only in iterations with a replay part, the rule of this
      project's replay models (``ContinualModel.NORM_LOSS_ONLY_WHEN_REPLAYING``); ``False`` in every iteration.
    * **Task boundaries**: ``end_task()`` on every layer after each training experience.

    A training forward of other inputs than the strategy's batches (e.g. GEM's reference gradients) is an error,
    since their classes are unknown; evaluation forwards and copies of the model are left alone. Each layer's
    ``norm_loss`` passes to the plugin right after its forward (the attribute then reads ``None``), so the model
    stays deep-copyable between forwards. Checking every label costs one host sync per training forward.

    Forward structure is the strategy's: DER normalises stream and replay jointly, as the reference AdaB²N; ER-ACE
    forwards them separately (this project's ``--forward_mode separate``), which the plugin warns of once.

    The plugin cannot tell which samples of a batch are the stream's (DER puts its replayed samples first), so it
    hands the layers ``stream=None``: TBBN, which needs the stream batch at the head of the batch, trains its first
    experience (plain BatchNorm) and refuses the training forwards of the later ones with a one-line ``ValueError``.
    """

    def __init__(self, only_when_replaying: bool | None = None) -> None:
        super().__init__()
        self.only_when_replaying = only_when_replaying
        self.schedule = {None: "always", True: "replay", False: "always"}[only_when_replaying]
        """One of :data:`SCHEDULES`; the default's is the strategy's (:func:`reference_schedule`), set at its start."""
        self.class_tasks: dict[int, int] = {}
        """Class (as in ``mb_y``) -> task index, the count of experiences trained before it first appeared."""
        self.current_task = 0
        """The task being trained: experiences completed so far, the layers' own task count."""
        self._strategy: Any = None
        self._layers: list[TaskAwareNorm] = []
        self._num_tasks: int | None = None
        self._lookup = torch.full((1,), -1, dtype=torch.long)
        self._handles: list[Any] = []
        self._losses = NormLosses()
        self._driven = False
        self._forwards = 0
        self._iterations = 0
        self._replaying = False
        self._warned = False

    # Avalanche's callbacks, in the order of a training experience.

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Find the layers, map the experience's classes to the current task, hook the model."""
        self._release()
        self._layers = task_aware_layers(strategy.model)
        if not self._layers:
            raise ValueError(
                f"{NAME}: the strategy's model has no task-aware norm layer; convert it first, e.g. "
                "convert_norm(model, 'AdaB2N', num_tasks=<experiences>), or leave the plugin out for other norms"
            )
        limits = [n for n in (getattr(layer, "num_tasks", None) for layer in self._layers) if isinstance(n, int)]
        self._num_tasks = min(limits) if limits else None
        if self._num_tasks is not None and self.current_task >= self._num_tasks:
            raise ValueError(
                f"{NAME}: experience {self.current_task + 1} is task {self.current_task}, but the layers were built "
                f"for num_tasks={self._num_tasks}: convert_norm(..., num_tasks=<number of experiences>)"
            )
        self._add_classes(_experience_classes(strategy.experience))
        self._strategy = strategy
        if self.only_when_replaying is None:
            self.schedule = reference_schedule(strategy)
        model: nn.Module = strategy.model
        self._handles = [
            model.register_forward_pre_hook(_SharedHook(self._before_forward)),
            model.register_forward_hook(_SharedHook(self._after_forward)),
        ]

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._losses.clear()
        self._forwards, self._replaying = 0, False

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._iterations += 1

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """``strategy.loss += regulariser()``, then the iteration's terms are spent."""
        term = self.regulariser()
        if term is not None:
            strategy.loss += term.view(())  # the strategy's model is one network: its one member's, [1]
        self._losses.clear()

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """One more task completed, for the layers and for the plugin."""
        for layer in self._layers:
            layer.end_task()
        self.current_task += 1
        self._release()

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._release()

    # The plugin's own API.

    def task_ids(self, labels: Tensor) -> Tensor:
        """Each label's task; ``ValueError`` for a class no trained experience has announced."""
        lookup = self._lookup.to(labels.device)  # its last entry is -1, the task of every other label
        ids = lookup[torch.where((labels >= 0) & (labels < len(lookup) - 1), labels, len(lookup) - 1)]
        if bool((ids < 0).any()):
            unknown = sorted({int(c) for c in labels[ids < 0].tolist()})
            raise ValueError(f"{NAME}: the batch holds classes {unknown} of no experience trained so far")
        return ids

    def regulariser(self) -> Tensor | None:
        """``Σ weight · Σ norm_loss`` over the training forwards since the last backward, ``[1]`` (``None``: nothing to
        add, or not in this iteration by the schedule), from the collector ``ContinualModel`` uses
        (``models/utils/task_aware.NormLosses``): the two agree to the last bit."""
        skip = {"replay": not self._replaying, "after_first": self._iterations == 0, "always": False}[self.schedule]
        return None if skip else self._losses.total()

    # Model hooks.

    def _before_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._driven = False
        if not module.training or self._strategy is None or module is not self._strategy.model:
            return  # evaluation (running statistics), or a copy of the model
        labels, buffer_batch = self._labels_of(args[0])
        task_ids = self.task_ids(labels)
        counts = None if self._num_tasks is None else task_counts(task_ids, self._num_tasks)
        for layer in self._layers:
            layer.norm_loss = None  # a layer this forward does not reach adds nothing
            layer.set_batch_tasks(task_ids, counts, stream=None)  # which samples are the stream is the strategy's
        if self.schedule == "replay" and not self._replaying:
            self._replaying = buffer_batch or bool((task_ids < self.current_task).any())
        self._forwards += 1
        self._driven = True
        if self._forwards == 2 and not self._warned and any(layer.prefers_joint_forward for layer in self._layers):
            self._warned = True
            warnings.warn(
                f"{NAME}: {type(self._strategy).__name__} runs stream and replay samples in separate forwards; the "
                "reference normalises them in one joint forward (prefers_joint_forward), so the layers' statistics "
                "are those of this project's --forward_mode separate",
                stacklevel=2,
            )

    def _after_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._driven:
            return
        self._driven = False
        self._losses.collect(self._layers, self.current_task)

    # Helpers.

    def _labels_of(self, inputs: Any) -> tuple[Tensor, bool]:
        """The labels of a training forward's inputs, and whether they are a buffer batch: the strategy's mini-batch
        (DER's replayed samples in its head), or ER-ACE's buffer batch."""
        s = self._strategy
        for x_name, y_name in (("mb_x", "mb_y"), ("mb_buffer_x", "mb_buffer_y")):
            if inputs is getattr(s, x_name, None):
                return getattr(s, y_name), x_name == "mb_buffer_x"
        raise ValueError(
            f"{NAME}: a training forward of {type(s).__name__}'s model got inputs that are neither strategy.mb_x nor "
            "strategy.mb_buffer_x, so their classes (hence tasks) are unknown"
        )

    def _add_classes(self, classes: Iterable[int]) -> None:
        classes = sorted(int(c) for c in classes)
        seen = {c: self.class_tasks[c] for c in classes if c in self.class_tasks}
        if seen:
            raise ValueError(
                f"{NAME}: classes {sorted(seen)} of task {self.current_task} were already seen in task(s) "
                f"{sorted(set(seen.values()))}; a sample's task is its class's first experience, so each class must "
                "belong to one experience (a class-incremental stream)"
            )
        self.class_tasks.update(dict.fromkeys(classes, self.current_task))
        lookup = torch.full((max(self.class_tasks) + 2,), -1, dtype=torch.long)
        lookup[list(self.class_tasks)] = torch.tensor(list(self.class_tasks.values()))
        self._lookup = lookup

    def _release(self) -> None:
        """Unhook the model (hooks live from ``before_training_exp`` to ``after_training_exp``)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._strategy, self._driven = [], None, False
        self._losses.clear()


def _experience_classes(experience: Any) -> list[int]:
    """An experience's classes: Avalanche's classes timeline, else its dataset's targets."""
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None:
        classes = experience.dataset.targets.uniques
    return [int(c) for c in classes]


def avalanche_benchmark(
    dataset: ContinualDataset, test_samples_per_class: int | None = None, dtype: torch.dtype = torch.float32
) -> CLScenario:
    """An Avalanche class-incremental benchmark of this project's dataset: its tasks as experiences, in its order.

    Images are normalised as the framework evaluates them (no augmentation); labels are the dataset's remapped ones,
    so task ``t`` holds classes ``dataset.task_classes(t)``. ``test_samples_per_class`` keeps the first so many test
    images of each class, as the dataset's own ``--test_samples_per_class`` does.
    """
    tasks = [dataset.task(t) for t in range(dataset.N_TASKS)]

    def split(x: Tensor, y: Tensor, per_class: int | None) -> TensorDataset:
        if per_class is not None:
            keep = torch.from_numpy(first_per_class(y.cpu().numpy(), per_class, dataset.n_classes())).to(y.device)
            x, y = x[keep], y[keep]
        data = TensorDataset(dataset.test_transform(x.cpu()).to(dtype), y.cpu())
        data.targets = y.cpu()  # type: ignore[attr-defined]  (what Avalanche reads the classes from)
        return data

    train = split(torch.cat([t.train_x for t in tasks]), torch.cat([t.train_y for t in tasks]), None)
    test = split(torch.cat([t.test_x for t in tasks]), torch.cat([t.test_y for t in tasks]), test_samples_per_class)
    order = list(range(dataset.n_classes()))
    return class_incremental_benchmark({"train": train, "test": test}, class_order=order, num_experiences=len(tasks))
