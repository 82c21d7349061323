"""Adaptive Balance of BatchNorm (AdaB²N), Lyu et al., NeurIPS 2023 (arXiv 2310.08855).

In continual learning a BatchNorm layer's statistics are dominated by the
current task: the stream batch outnumbers the replayed samples (*intra-task*
imbalance) and the exponential moving average forgets old batches (*recency
bias* across tasks). AdaB²N fixes both (paper Sec. 4):

* **Balance within a batch** (Sec. 4.1): the training statistics weight every
  task ``k <= T`` seen so far by ``π_k ∝ exp(w_k) + n_k`` — a Dirichlet-style
  compromise between the sample count ``n_k`` and learnable task logits ``w``
  — and split ``π_k`` evenly over the task's ``n_k`` samples. The logits are
  trained by the model's optimiser through a regulariser, ``norm_loss``, that
  keeps the batch statistics close to the running ones.
* **Adaptation across batches** (Sec. 4.2): the running statistics use a
  modified momentum ``η`` that interpolates, through ``kappa``, between
  BatchNorm's EMA (``kappa = 1``) and a cumulative average over all batches
  (``kappa = 0``).

The arithmetic reproduces the official implementation exactly, including its
quirk that a seen task absent from the batch keeps its weight (the per-sample
weights then sum to less than one); ``renorm=True`` (``--adab2n_renorm``)
renormalises over the tasks present instead.

Usage (any model; create the optimiser *after* the swap so ``task_weight`` is trained)::

    net = convert_norm(net, "AdaB2N", num_tasks=5, kappa=0.4, lambd=0.1)

then drive the layers through the task-aware protocol (``models/utils/task_aware.py``): task ids before each
training forward, ``norm_loss_weight(task) * norm_loss`` added to the loss, ``end_task()`` at each task boundary.
The regulariser's schedule (``lambd`` from task ``ada_t0`` on) is the layer's own option, like ``kappa``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.utils.norms import float32_under_autocast, register_norm
from models.utils.task_aware import task_counts
from utils.core.options import Option, at_least, between, require

KAPPA = Option(
    "--kappa", "momentum adaptation in [0, 1] (1 = plain EMA, 0 = cumulative)", check=between(0, 1), launcher="--kappas"
)
RENORM = Option("--adab2n_renorm", "renormalise the task weights over the tasks present in the batch", keyword="renorm")
LAMBD = Option("--lambd", "weight of the statistics regulariser in the loss", check=at_least(0), launcher="--lambdas")
ADA_T0 = Option(
    "--ada_t0", "first task (0-based) whose loss has the regulariser", check=at_least(0), launcher="--ada_t0s"
)


class AdaB2N(nn.BatchNorm2d):
    """BatchNorm2d with task-balanced training statistics and adaptive running-statistics momentum."""

    prefers_joint_forward: ClassVar[bool] = True  # the reference normalises stream and replay samples in one batch

    def __init__(
        self,
        num_features: int,
        num_tasks: int,
        kappa: float = 1.0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        init_weight: float = 0.0,
        renorm: bool = False,
        lambd: float = 0.0,
        ada_t0: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        require("kappa", kappa, KAPPA.check)
        require("lambd", lambd, LAMBD.check)
        require("ada_t0", ada_t0, ADA_T0.check)
        if momentum is None or not 0.0 < momentum <= 1.0:
            raise ValueError(f"AdaB2N needs a momentum in (0, 1], got {momentum}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, device=device)
        self.num_tasks = num_tasks
        self.kappa = float(kappa)
        self.renorm = renorm
        self.lambd = float(lambd)
        self.ada_t0 = int(ada_t0)
        self.task_weight = nn.Parameter(torch.full((num_tasks,), float(init_weight), device=device))
        self.register_buffer("tasks_completed", torch.zeros((), dtype=torch.long, device=device))
        # η of the last training forward; 0 = none yet. float64 like the reference's Python float.
        self.register_buffer("eta", torch.zeros((), dtype=torch.float64, device=device))
        # Task k takes part in the statistics once k <= tasks_completed: a mask over every task, read on the device,
        # so a training forward is the same operations for every task (no host read, no recompilation per task).
        self.register_buffer("_tasks", torch.arange(num_tasks, device=device), persistent=False)
        self._batch_tasks: Tensor | None = None
        self._batch_counts: Tensor | None = None
        self.norm_loss: Tensor | None = None

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, num_tasks: int, kappa: float = 1.0, **kwargs: Any) -> AdaB2N:
        """An AdaB2N layer with ``bn``'s hyper-parameters and state (running statistics, affine parameters)."""
        affine = kwargs.pop("affine", bn.affine)
        device = bn.running_mean.device if bn.running_mean is not None else None
        new = cls(bn.num_features, num_tasks, kappa, bn.eps, bn.momentum, affine, device=device, **kwargs)
        with torch.no_grad():
            if bn.track_running_stats and bn.running_mean is not None:
                new.running_mean.copy_(bn.running_mean)
                new.running_var.copy_(bn.running_var)
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
            if affine and bn.affine:
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
        return new

    def extra_repr(self) -> str:
        options = f"kappa={self.kappa}, renorm={self.renorm}, lambd={self.lambd}, ada_t0={self.ada_t0}"
        return f"{super().extra_repr()}, num_tasks={self.num_tasks}, {options}"

    def norm_loss_weight(self, task: int) -> float:
        """``lambd`` from task ``ada_t0`` on, else 0 (the reference's schedule of the regulariser)."""
        return self.lambd if task >= self.ada_t0 else 0.0

    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None) -> None:
        """Task index of every sample of the next training batch (``None``: plain batch statistics).

        ``counts`` (optional) is ``task_counts(task_ids, num_tasks)``: a model computes it
        once per batch and hands it to every layer instead of each layer counting again.
        """
        self._batch_tasks = task_ids
        self._batch_counts = counts

    def end_task(self) -> None:
        """One more task completed: its samples now get their own weight in the statistics."""
        self.tasks_completed += 1

    def next_eta(self) -> Tensor:
        """The momentum of this training forward (``num_batches_tracked`` already counts it).

        ``kappa = 1``: BatchNorm's momentum; ``kappa = 0``: ``1 / forwards``, a cumulative
        average; otherwise ``η₁ = m^κ`` and ``ηₜ = ηₜ₋₁ / (ηₜ₋₁ + (1 − m)^κ)``.
        """
        if self.kappa == 1.0:
            return torch.full_like(self.eta, self.momentum)
        if self.kappa == 0.0:
            return 1.0 / self.num_batches_tracked.to(self.eta.dtype)
        first = self.momentum**self.kappa
        return torch.where(self.eta > 0, self.eta / (self.eta + (1.0 - self.momentum) ** self.kappa), first)

    def sample_weights(self, task_ids: Tensor, counts: Tensor | None = None) -> Tensor:
        """Per-sample weights ``s_i = π_{k(i)} / n_{k(i)}`` with ``π_k ∝ exp(w_k) + n_k`` over tasks ``k <= T``.

        Before any completed task every sample is task 0 and ``s_i = 1 / N``: the plain batch statistics.
        """
        counts = task_counts(task_ids, self.num_tasks, self.task_weight.dtype) if counts is None else counts
        concentration = (self.task_weight.exp() + counts) * (self._tasks <= self.tasks_completed)
        if self.renorm:
            concentration = concentration * (counts > 0)
        task_weights = concentration / concentration.sum()
        return task_weights[task_ids] / counts[task_ids]

    @float32_under_autocast
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        task_ids, counts, self._batch_tasks, self._batch_counts = self._batch_tasks, self._batch_counts, None, None
        if task_ids is not None and len(task_ids) != len(input):
            raise ValueError(f"set_batch_tasks got {len(task_ids)} task ids for a batch of {len(input)} samples")
        if task_ids is None:
            var, mean = torch.var_mean(input, [0, 2, 3], correction=0)
        else:
            mean_i, square_i, shift = SampleMoments.apply(input)
            mean, var = weighted_statistics(mean_i, square_i, shift, self.sample_weights(task_ids, counts))
        out = normalized(input, mean, var, self.eps, self.weight, self.bias)
        with torch.no_grad():
            self.num_batches_tracked += 1
            eta = self.next_eta()
            self.eta.copy_(eta)
            keep, eta = (1.0 - eta).to(self.running_var.dtype), eta.to(self.running_mean.dtype)
            self.running_mean.add_((mean - self.running_mean) * eta)
            self.running_var.mul_(keep).add_(var * eta)
        # Against the statistics *after* this update, as the reference; cloned so a later forward's
        # in-place update cannot invalidate this loss's graph (separate forward passes).
        running_mean, running_var = self.running_mean.clone(), self.running_var.clone()
        self.norm_loss = F.mse_loss(mean, running_mean) + F.mse_loss(var, running_var)
        return out


class SampleMoments(torch.autograd.Function):
    """Each sample's mean and mean of squares per channel over H×W, ``[N, C]`` each, about a per-channel shift ``c``
    (the first sample's means, ``[C]``, no gradient: the results do not depend on it), with a one-pass backward.

    The shift keeps ``E[x²] − μ²`` free of cancellation when a channel's mean is far larger than its spread (the
    reference's two passes and BatchNorm's Welford are exact there). Autograd of ``mean`` and ``square().mean``
    would take five passes over the input's size backward; ``dx = dm / HW + (x − c) · 2 dq / HW`` is one.
    """

    @staticmethod
    def forward(ctx: Any, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ctx.shape = input.shape
        flat = input.flatten(2)
        mean = flat.mean(2)
        shift = mean[0]  # one sample's own means: near the batch's, and the same numbers alone and in a stack
        centered = flat - shift[:, None]
        ctx.save_for_backward(centered)
        ctx.mark_non_differentiable(shift)
        return mean - shift, torch.linalg.vecdot(centered, centered) / flat.shape[2], shift

    @staticmethod
    def backward(ctx: Any, d_mean: Tensor, d_square: Tensor, _: Tensor) -> Tensor:
        (centered,) = ctx.saved_tensors
        area = centered.shape[2]
        grad = torch.addcmul((d_mean / area)[:, :, None], centered, (d_square * (2.0 / area))[:, :, None])
        return grad.view(ctx.shape)


def weighted_statistics(mean_i: Tensor, square_i: Tensor, shift: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Task-balanced mean and variance per channel from each sample's mean and mean of squares over H×W about
    ``shift`` (:class:`SampleMoments`).

    With ``y = x − c``, ``S = Σ_i s_i`` (below one when a seen task is missing from the batch), ``μ = Σ_i s_i m_i =
    Σ_i s_i m'_i + c S`` and ``a = μ − c``, the reference's ``σ² = Σ_i s_i mean_HW((x_i − μ)²) = Σ_i s_i q'_i −
    2 a Σ_i s_i m'_i + a² S``: one product of ``[2C, N]`` with the weights serves both, after one pass over the input
    instead of the reference's second pass against ``μ``.
    """
    total = weights.sum()
    mean_y, square_y = torch.cat([mean_i, square_i], 1).t().matmul(weights).split(mean_i.shape[1])
    mean = mean_y + shift * total
    offset = mean - shift
    return mean, square_y - 2.0 * offset * mean_y + offset.square() * total


def normalized(
    input: Tensor, mean: Tensor, var: Tensor, eps: float, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """``γ (x − μ) / sqrt(σ² + eps) + β`` as one multiply-add over the input (``x · scale + shift`` per channel)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return torch.addcmul(shift.view(1, -1, 1, 1), input, scale.view(1, -1, 1, 1))


@register_norm("AdaB2N", KAPPA, RENORM, LAMBD, ADA_T0)
def adab2n(
    bn: nn.BatchNorm2d,
    *,
    num_tasks: int,
    affine: bool = True,
    kappa: float = 1.0,
    renorm: bool = False,
    lambd: float = 0.0,
    ada_t0: int = 0,
) -> AdaB2N:
    """AdaB²N for ``num_tasks`` tasks (defaults: kappa 1, the reference's task weights, no regulariser)."""
    return AdaB2N.from_bn(bn, num_tasks, kappa, affine=affine, renorm=renorm, lambd=lambd, ada_t0=ada_t0)
