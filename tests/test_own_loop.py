"""A task-aware norm in a training loop of one's own (issue 37): what the loop needs is exported from ``normcl``;
told each batch's tasks, AdaB²N's task weights learn; never told, an AdaB²N layer that trains past its first task
warns once, in one line naming the fix, and TBBN refuses to train."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import normcl
from normcl.models.utils import task_aware
from normcl.models.utils.adab2n import UNTOLD

UNTOLD_LOOP = """
import torch, normcl
from torch import nn
net = normcl.convert_norm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),
                          "AdaB2N", num_tasks=3, kappa=0.4, lambd=0.1)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
for task in range(3):
    for step in range(3):
        opt.zero_grad()
        net(torch.randn(8, 1, 8, 8)).mean().backward()
        opt.step()
    for layer in normcl.task_aware_layers(net):
        layer.end_task()
print("trained")
"""


def small_net(norm: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    return normcl.convert_norm(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)), norm,
                               **options)  # fmt: skip


def test_the_names_a_loop_needs_are_exported() -> None:
    assert normcl.task_aware_layers is task_aware.task_aware_layers and normcl.task_counts is task_aware.task_counts
    assert normcl.NormLosses is task_aware.NormLosses


def test_a_loop_that_tells_the_tasks_trains_adab2ns_task_weights_without_a_warning() -> None:
    net = small_net("AdaB2N", num_tasks=3, kappa=0.4, lambd=0.1)
    layers = normcl.task_aware_layers(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = normcl.NormLosses()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for task in range(3):
            for _ in range(2):
                x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 6, (12,))
                task_ids = torch.randint(0, task + 1, (12,))  # stream and replayed samples of earlier tasks
                counts = normcl.task_counts(task_ids, 3)
                for layer in layers:
                    layer.set_batch_tasks(task_ids, counts)
                loss = nn.functional.cross_entropy(net(x), y)
                losses.collect(layers, task)
                opt.zero_grad()
                losses.add_to(loss).backward()
                opt.step()
            for layer in layers:
                layer.end_task()
    assert len(layers) == 2 and all(layer.task_weight.abs().sum() > 0 for layer in layers)  # trained from zeros


@pytest.mark.slow
def test_a_loop_that_never_tells_the_tasks_is_warned_once_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", UNTOLD_LOOP], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout == "trained\n", proc.stderr
    assert proc.stderr.count("UserWarning") == 1 and proc.stderr.count(UNTOLD) == 1, proc.stderr
    assert "\n" not in UNTOLD and "set_batch_tasks" in UNTOLD and "normcl.task_aware_layers(net)" in UNTOLD
    first_task_only = UNTOLD_LOOP.replace("range(3):\n    for step", "range(1):\n    for step")
    proc = subprocess.run([sys.executable, "-c", first_task_only], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", "the first task has no tasks to balance: no warning"


def test_tbbn_never_told_the_stream_refuses_to_train_past_its_first_task() -> None:
    net = small_net("TBBN")
    net(torch.randn(8, 1, 8, 8))  # the first task: BatchNorm
    for layer in normcl.task_aware_layers(net):
        layer.end_task()
    with pytest.raises(ValueError, match=r"call set_batch_tasks\(task_ids, counts, stream=<stream samples"):
        net(torch.randn(8, 1, 8, 8))
