"""Scoring the members on test sets: after each task on the whole test sets (the accuracy matrix), and along the
stream on a fixed subset (``--eval_every``: the anytime curve, :mod:`normcl.utils.metrics`' AAA, min-ACC and WC-ACC).

Evaluating along the stream changes no number of the training: the network is scored in eval mode under
``no_grad`` (no running statistic moves), the test transform draws nothing, and the subset is drawn from a generator
of its own. A run with ``--eval_every`` trains bit for bit as the same run without it (``tests/test_anytime.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models.utils.continual_model import ContinualModel

SUBSET_SEED_OFFSET = 7919
"""Added to a run's seed to seed the draw of its evaluation subset: the same images for every method of a seed, and a
generator apart from every one that training draws from."""


@torch.no_grad()
def evaluate_members(
    model: ContinualModel,
    datasets: list[ContinualDataset],
    tasks: list[int],
    batch_size: int,
    debug: bool = False,
    subsets: Sequence[Sequence[Tensor]] | None = None,
) -> list[tuple[list[float], list[float]]]:
    """Each member's class-IL and task-IL accuracy (percent) on its own test sets of ``tasks``.

    The members are scored one by one as the ordinary networks they are (``StackedNet.member``; a run alone: its
    network): the arithmetic of each run alone, and on the CPU, where a grouped convolution over a large test batch
    is slower than K plain ones, faster too (on a GPU not yet measured). ``debug``
    (``--debug_mode``) scores only the first batch of each test set, as mammoth's debug mode. ``subsets[k][t]``: the
    indices of task ``t``'s test images that member ``k`` is scored on (default: all of them).
    """
    was_training = model.net.training
    model.net.eval()
    nets = (model.member_net(k) for k in range(len(datasets)))
    scores: list[tuple[list[float], list[float]]] = []
    for k, (net, dataset) in enumerate(zip(nets, datasets, strict=True)):
        correct = torch.zeros(len(tasks), 2, dtype=torch.long, device=dataset.device)
        sizes = []
        for i, t in enumerate(tasks):
            data, (lo, hi) = dataset.task(t), dataset.task_classes(t)
            test_x, test_y = data.test_x, data.test_y
            if subsets is not None:
                test_x, test_y = test_x[subsets[k][t]], test_y[subsets[k][t]]
            n = min(len(test_y), batch_size) if debug else len(test_y)
            for start in range(0, n, batch_size):
                x, y = test_x[start : start + batch_size], test_y[start : start + batch_size]
                out = model(dataset.test_transform(x), net=net)
                correct[i, 0] += (out.argmax(-1) == y).sum()
                correct[i, 1] += (out[..., lo:hi].argmax(-1) + lo == y).sum()
            sizes.append(max(n, 1))
        percent = correct.double() * 100.0 / torch.tensor(sizes, dtype=torch.double, device=correct.device)[:, None]
        class_il, task_il = percent.T.tolist()
        scores.append((class_il, task_il))
    model.net.train(was_training)
    return scores


def evaluation_subset(dataset: ContinualDataset, size: int, seed: int | None) -> list[Tensor]:
    """Per task, the indices of ``size`` of its test images (all of them if it has fewer), drawn once from ``seed``
    alone: the same images for every method and every run of the seed (``None``: seed 0)."""
    generator = torch.Generator().manual_seed((seed or 0) + SUBSET_SEED_OFFSET)
    out = []
    for t in range(dataset.N_TASKS):
        n = len(dataset.task(t).test_y)
        out.append(torch.randperm(n, generator=generator)[:size].sort().values.to(dataset.device))
    return out


def anytime_point(step: int, task: int, end: bool, scores: tuple[list[float], list[float]]) -> dict[str, object]:
    """One point of the anytime curve (``normcl.utils.metrics.Curve``): after ``step`` steps (over the run), while
    training ``task`` (0-based; ``end``: after its last step), the accuracy on each task seen so far, ``0 .. task``."""
    class_il, task_il = scores
    return {"step": step, "task": task, "end": end, "class_il": class_il, "task_il": task_il}
