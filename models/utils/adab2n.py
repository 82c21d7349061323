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
training forward, each member's ``norm_loss_weight(task)[k] * norm_loss[k]`` added to the loss (``NormLosses`` does
it for a loop of your own), ``end_task()`` at each task boundary.
The regulariser's schedule (``lambd`` from task ``ada_t0`` on) is the layer's own option, like ``kappa``. The
layer holds K runs' members side by side (a run alone: K = 1; ``models/utils/stacking.py``), so its options are
tuples of K values, its task logits ``[K, num_tasks]`` and its regulariser ``[K]``, whatever K is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normcl.models.utils.adab2n_options import ADA_T0, KAPPA, LAMBD, OPTIONS, PER_MEMBER
from normcl.models.utils.layer_stacking import MemberState, Stacking, load, load_member, same, stackable
from normcl.models.utils.norms import float32_under_autocast, register_norm
from normcl.models.utils.task_aware import task_counts
from normcl.utils.core.options import Option, require


class AdaB2N(MemberState, nn.BatchNorm2d):
    """BatchNorm2d with task-balanced training statistics and adaptive running-statistics momentum.

    One layer holds ``members`` runs (``models/utils/stacking.py``; a run alone: one): K·C channels, member k's in the
    k-th block, and each member its own task ids (``[K, N]``), task logits (``task_weight``, ``[K, num_tasks]``),
    ``kappa`` (so its own ``η``, ``[K]``), ``lambd`` and ``ada_t0`` (tuples of K values), whatever K is. Its
    regulariser is ``[K]``, its weight K floats. A run alone's state dict keeps the shapes of a layer without members
    (``task_weight`` ``[num_tasks]``, ``eta`` a scalar), as checkpoints always had them (:class:`MemberState`).
    """

    MEMBER_FIRST = ("task_weight", "eta")
    prefers_joint_forward: ClassVar[bool] = True  # the reference normalises stream and replay samples in one batch

    def __init__(
        self,
        num_features: int,
        num_tasks: int,
        kappa: float | Sequence[float] = 1.0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        init_weight: float = 0.0,
        renorm: bool = False,
        lambd: float | Sequence[float] = 0.0,
        ada_t0: int | Sequence[int] = 0,
        device: torch.device | str | None = None,
        members: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        """``kappa``, ``lambd`` and ``ada_t0``: each member's, or one value for every member."""
        kappas, lambds = _per_member(KAPPA, kappa, members), _per_member(LAMBD, lambd, members)
        ada_t0s = _per_member(ADA_T0, ada_t0, members)
        if momentum is None or not 0.0 < momentum <= 1.0:
            raise ValueError(f"AdaB2N needs a momentum in (0, 1], got {momentum}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if num_features % members:
            raise ValueError(f"{num_features} channels cannot be split among {members} members")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, device=device, dtype=dtype)
        self.num_tasks, self.members, self.renorm = num_tasks, members, renorm
        self.kappa, self.lambd = tuple(map(float, kappas)), tuple(map(float, lambds))
        self.ada_t0 = tuple(map(int, ada_t0s))
        logits = torch.full((members, num_tasks), float(init_weight), device=device, dtype=dtype)
        self.task_weight = nn.Parameter(logits)
        self.register_buffer("tasks_completed", torch.zeros((), dtype=torch.long, device=device))
        # η of the last training forward; 0 = none yet. Made float64 (the reference's Python float), but cast with the
        # layer: convert_norm places the layer in the network's dtype, so a float32 run computes η in float32.
        self.register_buffer("eta", torch.zeros(members, dtype=torch.float64, device=device))
        # Task k takes part in the statistics once k <= tasks_completed: a mask over every task, read on the device,
        # so a training forward is the same operations for every task (no host read, no recompilation per task).
        self.register_buffer("_tasks", torch.arange(num_tasks, device=device), persistent=False)
        self._build_constants()
        self._batch_tasks: Tensor | None = None
        self._batch_counts: Tensor | None = None
        self.norm_loss: Tensor | None = None
        # Python flags, never read from the device: whether a task ended, and whether the loop ever said the batch's
        # tasks (a layer trained past its first task without them warns once: UNTOLD).
        self._ended_a_task = False
        self._told = False

    def _build_constants(self) -> None:
        """Each member's constants of the momentum recursion, ``[K]``, from ``kappa``, in ``eta``'s dtype and on its
        device: the Python floats of the reference's arithmetic, rounded as they were when ``eta`` follows the
        network's dtype. Non-persistent; rebuilt whenever the layer moves or changes dtype (:meth:`_apply`)."""
        first, decay = [self.momentum**k for k in self.kappa], [(1 - self.momentum) ** k for k in self.kappa]
        for name, values in (("_kappa", self.kappa), ("_first_eta", first), ("_decay", decay)):
            self.register_buffer(name, self.eta.new_tensor(values), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> AdaB2N:
        super()._apply(fn, recurse)
        self._build_constants()
        return self

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

    @classmethod
    def stack(cls, layers: Sequence[AdaB2N]) -> AdaB2N:
        """The layers' members as one layer, each with its own options and state (``Stacking.stack``)."""
        first = layers[0]
        same(layers, "num_tasks", "eps", "momentum", "affine", "renorm")
        widths = {m.num_features // m.members for m in layers}
        if len(widths) > 1:
            raise ValueError(f"AdaB2N layers of {sorted(widths)} channels a member cannot stack: members of one width")
        options = {name: [v for m in layers for v in getattr(m, name)] for name in ("kappa", "lambd", "ada_t0")}
        new = cls(sum(m.num_features for m in layers), first.num_tasks, eps=first.eps, momentum=first.momentum,
                  affine=first.affine, renorm=first.renorm, members=sum(m.members for m in layers),
                  device=first.running_mean.device, dtype=first.running_mean.dtype, **options)  # fmt: skip
        return load(new, layers)

    def member(self, k: int, template: AdaB2N) -> AdaB2N:
        """Member ``k`` as a one-member layer like ``template``, with its options and state (``Stacking.member``)."""
        c = self.num_features // self.members
        single = type(template)(c, self.num_tasks, self.kappa[k], self.eps, self.momentum, self.affine,
                                renorm=self.renorm, lambd=self.lambd[k], ada_t0=self.ada_t0[k],
                                device=self.running_mean.device, dtype=self.running_mean.dtype)  # fmt: skip
        return load_member(self, k, single)

    def extra_repr(self) -> str:
        options = f"kappa={self.kappa}, renorm={self.renorm}, lambd={self.lambd}, ada_t0={self.ada_t0}"
        return f"{super().extra_repr()}, num_tasks={self.num_tasks}, {options}, members={self.members}"

    def norm_loss_weight(self, task: int) -> tuple[float, ...]:
        """Each member's weight of ``norm_loss`` while training ``task``: its ``lambd`` from its task ``ada_t0`` on,
        else 0 (the reference's schedule of the regulariser)."""
        return tuple(lambd if task >= t0 else 0.0 for lambd, t0 in zip(self.lambd, self.ada_t0, strict=True))

    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None, stream: int | None = None) -> None:
        """Task index of every sample of the next training batch, each member's, ``[K, N]`` (``None``: plain batch
        statistics).

        ``counts`` (optional) is ``task_counts(task_ids, num_tasks)``: a model computes it
        once per batch and hands it to every layer instead of each layer counting again. ``stream`` (the stream
        batch's size) is ignored: the task ids say all AdaB²N needs.
        """
        self._batch_tasks = task_ids
        self._batch_counts = counts
        self._told = True

    def end_task(self) -> None:
        """One more task completed: its samples now get their own weight in the statistics."""
        self.tasks_completed += 1
        self._ended_a_task = True

    def next_eta(self) -> Tensor:
        """Each member's momentum of this training forward, ``[K]`` (``num_batches_tracked`` already counts it).

        ``kappa = 1``: BatchNorm's momentum; ``kappa = 0``: ``1 / forwards``, a cumulative
        average; otherwise ``η₁ = m^κ`` and ``ηₜ = ηₜ₋₁ / (ηₜ₋₁ + (1 − m)^κ)``.
        """
        momentum = torch.full_like(self.eta, self.momentum)
        cumulative = 1.0 / self.num_batches_tracked.to(self.eta.dtype)
        recursive = torch.where(self.eta > 0, self.eta / (self.eta + self._decay), self._first_eta)
        return torch.where(self._kappa == 1.0, momentum, torch.where(self._kappa == 0.0, cumulative, recursive))

    def sample_weights(self, task_ids: Tensor, counts: Tensor | None = None) -> Tensor:
        """Per-sample weights ``s_i = π_{k(i)} / n_{k(i)}`` with ``π_k ∝ exp(w_k) + n_k`` over tasks ``k <= T``, each
        member's, shaped as ``task_ids``.

        Before any completed task every sample is task 0 and ``s_i = 1 / N``: the plain batch statistics.
        """
        shape, task_ids = task_ids.shape, task_ids.view(self.members, -1)
        counts = task_counts(task_ids, self.num_tasks, self.task_weight.dtype) if counts is None else counts
        counts = counts.view(self.members, -1)
        concentration = (self.task_weight.exp() + counts) * (self._tasks <= self.tasks_completed)
        if self.renorm:
            concentration = concentration * (counts > 0)
        task_weights = concentration / concentration.sum(1, keepdim=True)
        return (task_weights.gather(1, task_ids) / counts.gather(1, task_ids)).view(shape)

    @float32_under_autocast
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        task_ids, counts, self._batch_tasks, self._batch_counts = self._batch_tasks, self._batch_counts, None, None
        if task_ids is not None and task_ids.numel() != self.members * len(input):
            raise ValueError(f"set_batch_tasks got {task_ids.numel()} task ids for {self.members} member(s) of a "
                             f"batch of {len(input)} samples")  # fmt: skip
        if task_ids is None and self._ended_a_task and not self._told:
            self._told = True  # warned: the check is not repeated
            warnings.warn(UNTOLD, stacklevel=2)
        if task_ids is None:
            var, mean = torch.var_mean(input, [0, 2, 3], correction=0)
        else:
            mean, var = self._weighted(input, self.sample_weights(task_ids, counts).view(self.members, -1))
        out = normalized(input, mean, var, self.eps, self.weight, self.bias)
        c = self.num_features // self.members
        with torch.no_grad():
            self.num_batches_tracked += 1
            eta = self.next_eta()
            self.eta.copy_(eta)
            keep = (1.0 - eta).to(self.running_var.dtype).repeat_interleave(c)
            eta = eta.to(self.running_mean.dtype).repeat_interleave(c)
            self.running_mean.add_((mean - self.running_mean) * eta)
            self.running_var.mul_(keep).add_(var * eta)
        # Against the statistics *after* this update, as the reference; cloned so a later forward's
        # in-place update cannot invalidate this loss's graph (separate forward passes). One mse per member: the
        # arithmetic of each member alone.
        running_mean, running_var = self.running_mean.clone().view(-1, c), self.running_var.clone().view(-1, c)
        mean, var = mean.view(-1, c), var.view(-1, c)
        losses = [F.mse_loss(mean[k], running_mean[k]) + F.mse_loss(var[k], running_var[k]) for k in range(len(mean))]
        self.norm_loss = torch.stack(losses)
        return out

    def _weighted(self, input: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's :func:`weighted_statistics` over its own channels, ``[K·C]`` each: the per-sample moments
        are one pass over all K·C channels, the weighted sums one small product per member (each as alone)."""
        c = self.num_features // self.members
        mean_i, square_i, shift = SampleMoments.apply(input)
        parts = [
            weighted_statistics(mean_i[:, b], square_i[:, b], shift[b], weights[k])
            for k, b in enumerate(slice(k * c, (k + 1) * c) for k in range(self.members))
        ]
        return torch.cat([mean for mean, _ in parts]), torch.cat([var for _, var in parts])


UNTOLD = (
    "AdaB2N trains past its first task without ever being told the batch's tasks, so its statistics are plain batch "
    "statistics and its task weights get no gradient: before each training forward call "
    "layer.set_batch_tasks(task_ids, normcl.task_counts(task_ids, num_tasks)) on every layer of "
    "normcl.task_aware_layers(net), and add its norm_loss to the loss (documentation: Your own training loop)"
)
"""The one-line warning of a layer that ended a task but was never given task ids (once per process and place)."""


def _per_member(option: Option, value: Any, members: int) -> tuple[Any, ...]:
    """Each member's value of ``option`` (one value: every member's), checked."""
    values = tuple(value) if isinstance(value, Sequence) else (value,) * members
    if len(values) != members:
        raise ValueError(f"AdaB2N with {members} members needs one {option.keyword} per member, got {len(values)}")
    for v in values:
        require(option.keyword, v, option.check)
    return values


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


@register_norm("AdaB2N", *OPTIONS)
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


stackable(Stacking(AdaB2N.stack, AdaB2N.member, PER_MEMBER))(AdaB2N)
