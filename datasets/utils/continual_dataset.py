"""Base class of every class-incremental benchmark.

A subclass only says what its data is (shape, classes, tasks, normalisation)
and how to read its files (``load_raw``). Everything the training loop needs is
built here once: the per-seed class order, the task splits with contiguous
labels, the optional ``--samples_per_class`` subset and ``--validation`` split,
uint8 tensors on the training device and batched transforms.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from normcl.datasets.transforms import Normalize, TrainTransform
from normcl.datasets.utils.formats import file_record, find_or_fetch
from normcl.utils.core.errors import DataError
from normcl.utils.core.options import Option, positive, require

VALIDATION_FRACTION = 0.1


@dataclass
class RawSplit:
    """Images as uint8 (N, C, H, W) and original class ids as int64 (N,)."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class TaskData:
    """One task's uint8 images and remapped labels, on the training device."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def first_per_class(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """The indices of the first ``n`` samples of each class ``0 .. n_classes-1``, in the order of ``labels``."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(n_classes)]))


def run_dtype(args: Namespace) -> torch.dtype:
    """The run's floating dtype (``--dtype``; float32 for arguments from before the flag)."""
    return getattr(torch, getattr(args, "dtype", "float32"))


class ContinualDataset:
    """A dataset split into ``N_TASKS`` tasks of ``N_CLASSES_PER_TASK`` classes."""

    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    """The dataset's own command-line flags (``utils/core/options.py``), read back from ``self.args``."""
    SETTING: ClassVar[str] = "class-il"
    N_TASKS: ClassVar[int]
    N_CLASSES_PER_TASK: ClassVar[int]
    SHAPE: ClassVar[tuple[int, int, int]]  # (C, H, W)
    MEAN: ClassVar[tuple[float, ...]]
    STD: ClassVar[tuple[float, ...]]
    HFLIP: ClassVar[bool] = True
    CROP_PADDING: ClassVar[int] = 4
    BACKBONE: ClassVar[str] = "resnet18"
    N_EPOCHS: ClassVar[int] = 50  # mammoth's offline defaults; the paper's online runs pass --epochs 1
    BATCH_SIZE: ClassVar[int] = 32

    def __init__(self, args: Namespace, device: torch.device | str = "cpu") -> None:
        self.args = args
        self.device = torch.device(device)
        dtype = run_dtype(args)  # --dtype float64: float64 from the pixels on
        self.train_transform = TrainTransform(self.MEAN, self.STD, self.CROP_PADDING, self.HFLIP, dtype)
        self.test_transform = Normalize(self.MEAN, self.STD, dtype)
        self.class_order = self.make_class_order(getattr(args, "seed", None), getattr(args, "no_task_shuffle", False))
        self.files: list[Path] = []
        """The files ``load_raw`` read, as :meth:`find_files` found them (empty: not said)."""
        self._tasks: list[TaskData] | None = None

    @property
    def name(self) -> str:
        """The name the dataset is registered under (``--dataset``)."""
        from normcl.datasets import DATASETS

        return DATASETS.name_of(type(self))

    @classmethod
    def n_classes(cls) -> int:
        return cls.N_TASKS * cls.N_CLASSES_PER_TASK

    @classmethod
    def make_class_order(cls, seed: int | None, no_task_shuffle: bool) -> np.ndarray:
        """``order[c]`` is the label that original class ``c`` gets; task ``t`` holds labels ``[t*k, (t+1)*k)``.

        As in the reference (``targets = order[targets]``) the order is
        ``default_rng(42 + seed).permutation(n_classes)``; seed 0, no seed and
        ``--no_task_shuffle`` keep the natural order.
        """
        if no_task_shuffle or not seed:
            return np.arange(cls.n_classes())
        return np.random.default_rng(42 + seed).permutation(cls.n_classes())

    def task_classes(self, task: int) -> tuple[int, int]:
        """Half-open range of (remapped) labels that belong to ``task``."""
        return task * self.N_CLASSES_PER_TASK, (task + 1) * self.N_CLASSES_PER_TASK

    def load_raw(self) -> tuple[RawSplit, RawSplit]:
        """Read the (train, test) splits from disk or download them (find them with :meth:`find_files`)."""
        raise NotImplementedError

    def find_files(self, *where: Any, **how: Any) -> list[Path]:
        """The dataset's files: ``formats.find_or_fetch(name, dirs, names, how_to_get, fetch=None, suffixes=("",))``
        with this dataset's name (the first of ``dirs`` that holds every one of ``names``, else fetched); the run
        records them (:meth:`data_record`)."""
        self.files = find_or_fetch(self.name, *where, **how)
        return self.files

    def data_record(self) -> dict[str, Any] | None:
        """The folder of the files the run read, and each one's size and modification time (``None``: the dataset's
        ``load_raw`` did not find its files with :meth:`find_files`)."""
        return file_record(self.files) if self.files else None

    def data_line(self) -> str:
        """One line saying which files the run read."""
        if not self.files:
            return f"data: {self.name} did not say which files it read (its load_raw does not use find_files)"
        record = file_record(self.files)
        megabytes = sum(f["bytes"] for f in record["files"].values()) / 1e6
        return f"data: {self.name} read {', '.join(record['files'])} ({megabytes:.1f} MB) in {record['folder']}"

    def _checked(self, split: RawSplit, name: str) -> RawSplit:
        x, y = np.asarray(split.x), np.asarray(split.y).astype(np.int64).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != self.SHAPE:
            raise DataError(
                f"{self.name} {name} images have shape {x.shape} and dtype {x.dtype}, expected "
                f"uint8 (N, {', '.join(map(str, self.SHAPE))}); the files are corrupt: delete them and fetch them again"
            )
        if len(x) != len(y):
            raise DataError(
                f"{self.name} {name} split has {len(x)} images but {len(y)} labels; "
                "the files are truncated or mismatched: fetch them again"
            )
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes()):
            raise DataError(
                f"{self.name} {name} labels span [{y.min()}, {y.max()}], outside the {self.n_classes()} classes "
                f"[0, {self.n_classes() - 1}]; the label file is corrupt: fetch it again"
            )
        return RawSplit(x, y)

    def _select(self, train: RawSplit, test: RawSplit) -> tuple[RawSplit, RawSplit]:
        """Apply ``--samples_per_class``, ``--validation`` and ``--test_samples_per_class`` to the raw splits."""
        spc = getattr(self.args, "samples_per_class", None)
        if spc is not None:
            require("samples_per_class", spc, positive)
            keep = first_per_class(train.y, spc, self.n_classes())
            train = RawSplit(train.x[keep], train.y[keep])
        if getattr(self.args, "validation", False):
            # A fixed split, the same for every seed, so hyper-parameters chosen on it are comparable.
            order = np.random.default_rng(0).permutation(len(train.y))
            held = np.zeros(len(train.y), dtype=bool)
            for c in range(self.n_classes()):
                members = order[train.y[order] == c]
                held[members[: round(VALIDATION_FRACTION * len(members))]] = True
            test = RawSplit(train.x[held], train.y[held])
            train = RawSplit(train.x[~held], train.y[~held])
        per_class = getattr(self.args, "test_samples_per_class", None)
        if per_class is not None:
            require("test_samples_per_class", per_class, positive)
            keep = first_per_class(test.y, per_class, self.n_classes())
            test = RawSplit(test.x[keep], test.y[keep])
        return train, test

    def prepare(self) -> None:
        """Load the files and build every task's tensors (idempotent)."""
        if self._tasks is not None:
            return
        train, test = self.load_raw()
        train, test = self._checked(train, "train"), self._checked(test, "test")
        train, test = self._select(train, test)
        labels = {"train": self.class_order[train.y], "test": self.class_order[test.y]}
        tasks = []
        for t in range(self.N_TASKS):
            lo, hi = self.task_classes(t)
            parts = []
            for name, split in (("train", train), ("test", test)):
                idx = np.flatnonzero((labels[name] >= lo) & (labels[name] < hi))
                parts.append(torch.from_numpy(np.ascontiguousarray(split.x[idx])).to(self.device))
                parts.append(torch.from_numpy(labels[name][idx]).to(self.device))
            tasks.append(TaskData(*parts))
        self._tasks = tasks

    def task(self, t: int) -> TaskData:
        """Tensors of task ``t`` (labels already in ``task_classes(t)``)."""
        self.prepare()
        assert self._tasks is not None
        return self._tasks[t]
