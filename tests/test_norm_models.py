"""The base class's bookkeeping, and the recency-bias diagnostics on a constructed case (every norm under every model
trains in ``tests/test_stack_runs.py``, enumerated from the registries)."""

from __future__ import annotations

import math
from argparse import Namespace
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from normcl.datasets import get_dataset_class
from normcl.datasets.utils.continual_dataset import ContinualDataset, RawSplit
from normcl.models.er import Er
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.norms import NORMS
from normcl.utils.args import parse_args
from normcl.utils.norm_diagnostics import diagnose
from normcl.utils.run_setup import build_model


@pytest.fixture(scope="module")
def fmnist() -> ContinualDataset:
    args = parse_args(["--dataset", "seq-fmnist", "--model", "sgd", "--lr", "0.05", "--samples_per_class", "20"])
    dataset = get_dataset_class("seq-fmnist")(args, "cpu")
    dataset.prepare()
    return dataset


def test_the_base_class_keeps_the_books_for_hooks_that_never_call_super(fmnist: ContinualDataset) -> None:
    """A model's ``end_task`` is a hook: the task index, the layers' task count and the ring buffer's task move on
    without ``super()``, and the hook runs before the bookkeeping (joint trains on the last task there)."""

    class Forgetful(Er):  # overrides both hooks, calls no super()
        def begin_task(self, dataset: ContinualDataset) -> None:
            self.calls.append(("begin", self.current_task))

        def end_task(self, dataset: ContinualDataset) -> None:
            self.calls.append(("end", self.current_task, int(self.net.inner.bn1.tasks_completed)))

    args = parse_args(
        ["--dataset", "seq-fmnist", "--model", "er", "--lr", "0.05", "--nl", "AdaB2N", "--nf", "8",
         "--buffer_size", "10", "--buffer_mode", "ring", "--bs", "5"]
    )  # fmt: skip
    fmnist.args = args
    built = build_model([args], [fmnist])
    net = built.net
    model = Forgetful(net, torch.nn.functional.cross_entropy, built.members, fmnist)
    model.calls = []
    layers = [m for m in net.modules() if isinstance(m, AdaB2N)]
    for task in range(2):
        model.meta_begin_task(fmnist)
        x, y = fmnist.task(task).train_x[None, :5], fmnist.task(task).train_y[None, :5]  # one member's batch
        model.observe(model.transform(x), y, x)
        model.meta_end_task(fmnist)
    assert model.calls == [("begin", 0), ("end", 0, 0), ("begin", 1), ("end", 1, 1)]
    assert model.current_task == 2 and {int(m.tasks_completed) for m in layers} == {2}
    assert model.buffer.buffers[0].task_seen == [5, 5, 0, 0, 0], "each task's samples went to its own ring"


class TwoTasks(ContinualDataset):
    """Two one-class tasks of 2x2 grey images with known pixel statistics (after /255)."""

    N_TASKS = 2
    N_CLASSES_PER_TASK = 1
    SHAPE = (1, 2, 2)
    MEAN = (0.0,)
    STD = (1.0,)
    IMAGES: ClassVar[np.ndarray] = np.concatenate(
        [np.zeros((2, 1, 2, 2)), np.full((2, 1, 2, 2), 255), np.full((4, 1, 2, 2), 51)]
    ).astype(np.uint8)
    LABELS: ClassVar[np.ndarray] = np.array([0, 0, 0, 0, 1, 1, 1, 1])

    def load_raw(self) -> tuple[RawSplit, RawSplit]:
        return RawSplit(self.IMAGES, self.LABELS), RawSplit(self.IMAGES, self.LABELS)


def test_diagnostics_give_the_known_distances() -> None:
    dataset = TwoTasks(Namespace(seed=0), "cpu")
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():  # exactly the latest task's statistics: mean 0.2, variance 0
        bn.running_mean.fill_(0.2)
        bn.running_var.fill_(0.0)
    report = diagnose(nn.Sequential(bn), dataset, last_task=1)
    # task 0: pixels {0, 1} -> mean 0.5, E[x^2] 0.5; task 1: 0.2 -> mean 0.2, E[x^2] 0.04
    # balanced: mean 0.35, variance (0.5 + 0.04) / 2 - 0.35^2 = 0.1475
    layer = report["layers"]["0"]
    assert layer["mean_to_latest"] == pytest.approx(0.0, abs=1e-7)
    assert layer["var_to_latest"] == pytest.approx(0.0, abs=1e-7)
    assert layer["mean_to_balanced"] == pytest.approx(0.15, abs=1e-7)
    assert layer["var_to_balanced"] == pytest.approx(0.1475, abs=1e-7)
    assert report["summary"] == pytest.approx(layer)
    after_first = diagnose(nn.Sequential(bn), dataset, last_task=0)["layers"]["0"]
    assert after_first["mean_to_balanced"] == after_first["mean_to_latest"] == pytest.approx(0.3)
    assert math.isclose(after_first["var_to_latest"], 0.25, abs_tol=1e-7)


def test_diagnostics_of_cn_compare_with_the_group_normalised_input() -> None:
    dataset = TwoTasks(Namespace(seed=0), "cpu")
    cn = NORMS.get("CN").builder(nn.BatchNorm2d(1))
    with torch.no_grad():  # every image is constant, so its group-normalised input is exactly 0 in both tasks
        cn.running_mean.fill_(0.1)
        cn.running_var.fill_(0.3)
    layer = diagnose(nn.Sequential(cn), dataset, last_task=1)["layers"]["0"]
    assert layer["mean_to_balanced"] == layer["mean_to_latest"] == pytest.approx(0.1, abs=1e-7)
    assert layer["var_to_balanced"] == layer["var_to_latest"] == pytest.approx(0.3, abs=1e-7)
