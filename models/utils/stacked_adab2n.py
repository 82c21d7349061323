"""AdaB²N for K stacked members (``models/utils/stacking.py``): each member's task weights, momentum and regulariser.

The input is ``[N, K·C, H, W]`` with member k's channels in the k-th block, and each member has its own task ids
(``[K, N]``: members with other seeds replay other samples), task logits, ``kappa`` (so its own ``η``), ``lambd``
and ``ada_t0``. The arithmetic is :class:`~models.utils.adab2n.AdaB2N`'s, member by member: the per-sample moments
are one pass over all K·C channels, the weighted sums one small product per member (each as alone), the running
statistics one update over K·C channels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.utils.adab2n import AdaB2N, SampleMoments, normalized, weighted_statistics
from models.utils.layer_stacking import Stacking, stackable
from models.utils.norms import float32_under_autocast


class StackedAdaB2N(nn.Module):
    """K AdaB²N layers of C channels as one layer of K·C channels; implements the task-aware protocol per member."""

    prefers_joint_forward: ClassVar[bool] = AdaB2N.prefers_joint_forward

    def __init__(self, layers: Sequence[AdaB2N]) -> None:
        super().__init__()
        first, k = layers[0], len(layers)
        for name in ("num_features", "num_tasks", "eps", "momentum", "affine", "renorm"):
            if len({getattr(layer, name) for layer in layers}) > 1:
                raise ValueError(f"cannot stack AdaB2N layers whose {name} differ")
        self.members, self.num_features, self.num_tasks = k, first.num_features, first.num_tasks
        self.eps, self.momentum, self.affine, self.renorm = first.eps, first.momentum, first.affine, first.renorm
        self.kappas = [layer.kappa for layer in layers]
        device = first.running_mean.device
        cat = lambda name: torch.cat([getattr(layer, name).detach() for layer in layers])  # noqa: E731
        stack = lambda name: torch.stack([getattr(layer, name).detach() for layer in layers])  # noqa: E731
        self.weight = nn.Parameter(cat("weight")) if first.affine else None
        self.bias = nn.Parameter(cat("bias")) if first.affine else None
        self.task_weight = nn.Parameter(stack("task_weight"))
        self.register_buffer("running_mean", cat("running_mean"))
        self.register_buffer("running_var", cat("running_var"))
        self.register_buffer("eta", stack("eta"))
        for name in ("num_batches_tracked", "tasks_completed"):
            if any(not torch.equal(getattr(layer, name), getattr(first, name)) for layer in layers):
                raise ValueError(f"cannot stack AdaB2N layers whose {name} differ")
            self.register_buffer(name, getattr(first, name).detach().clone())
        self.register_buffer("_tasks", first._tasks.clone(), persistent=False)
        # The per-member constants of the momentum recursion and of the regulariser's schedule, on the device.
        as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("_kappa", as_tensor(self.kappas, torch.float64), persistent=False)
        first_eta = [first.momentum**kappa for kappa in self.kappas]
        decay = [(1.0 - first.momentum) ** kappa for kappa in self.kappas]
        self.register_buffer("_first_eta", as_tensor(first_eta, torch.float64), persistent=False)
        self.register_buffer("_decay", as_tensor(decay, torch.float64), persistent=False)
        self.register_buffer("_lambd", as_tensor([layer.lambd for layer in layers], torch.float64), persistent=False)
        self.register_buffer("_ada_t0", as_tensor([layer.ada_t0 for layer in layers], torch.long), persistent=False)
        self._batch_tasks: Tensor | None = None
        self._batch_counts: Tensor | None = None
        self.norm_loss: Tensor | None = None

    def member(self, k: int, template: AdaB2N) -> AdaB2N:
        """Member ``k`` as an :class:`AdaB2N` layer like ``template``, with its current state."""
        member = copy.deepcopy(template)
        c = self.num_features
        with torch.no_grad():
            if self.weight is not None and self.bias is not None:
                member.weight.copy_(self.weight[k * c : (k + 1) * c])
                member.bias.copy_(self.bias[k * c : (k + 1) * c])
            member.task_weight.copy_(self.task_weight[k])
            member.running_mean.copy_(self.running_mean[k * c : (k + 1) * c])
            member.running_var.copy_(self.running_var[k * c : (k + 1) * c])
            member.eta.copy_(self.eta[k])
            member.num_batches_tracked.copy_(self.num_batches_tracked)
            member.tasks_completed.copy_(self.tasks_completed)
        return member

    # -- the task-aware protocol, per member -------------------------------------------------------------------
    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None) -> None:
        """Each member's task ids ``[K, N]``; ``counts = task_counts(task_ids, num_tasks)``, ``[K, num_tasks]``."""
        self._batch_tasks, self._batch_counts = task_ids, counts

    def norm_loss_weight(self, task: int) -> Tensor:
        """Each member's weight of its regulariser while training ``task``: its ``lambd`` from its ``ada_t0`` on
        (float64, as a Python float; the model casts it to the loss's dtype)."""
        return torch.where(self._ada_t0 <= task, self._lambd, 0.0)

    def end_task(self) -> None:
        self.tasks_completed += 1

    # -- arithmetic ----------------------------------------------------------------------------------------------
    def next_eta(self) -> Tensor:
        """Each member's momentum of this training forward, as :meth:`AdaB2N.next_eta` computes it."""
        momentum = torch.full_like(self.eta, self.momentum)
        cumulative = 1.0 / self.num_batches_tracked.to(self.eta.dtype)
        recursive = torch.where(self.eta > 0, self.eta / (self.eta + self._decay), self._first_eta)
        return torch.where(self._kappa == 1.0, momentum, torch.where(self._kappa == 0.0, cumulative, recursive))

    def sample_weights(self, task_ids: Tensor, counts: Tensor) -> Tensor:
        """Each member's per-sample weights ``[K, N]`` (:meth:`AdaB2N.sample_weights`)."""
        concentration = (self.task_weight.exp() + counts) * (self._tasks <= self.tasks_completed)
        if self.renorm:
            concentration = concentration * (counts > 0)
        task_weights = concentration / concentration.sum(1, keepdim=True)
        return task_weights.gather(1, task_ids) / counts.gather(1, task_ids)

    def _weighted(self, input: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's :func:`~models.utils.adab2n.weighted_statistics` over its own channels, ``[K·C]`` each:
        the member's own arithmetic alone (one small product per member)."""
        c = self.num_features
        mean_i, square_i, shift = SampleMoments.apply(input)
        parts = [
            weighted_statistics(
                mean_i[:, k * c : (k + 1) * c], square_i[:, k * c : (k + 1) * c], shift[k * c : (k + 1) * c], weights[k]
            )
            for k in range(self.members)
        ]
        return torch.cat([mean for mean, _ in parts]), torch.cat([var for _, var in parts])

    @float32_under_autocast
    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        task_ids, counts, self._batch_tasks, self._batch_counts = self._batch_tasks, self._batch_counts, None, None
        if task_ids is None:
            var, mean = torch.var_mean(input, [0, 2, 3], correction=0)
        else:
            assert counts is not None
            mean, var = self._weighted(input, self.sample_weights(task_ids, counts))
        out = normalized(input, mean, var, self.eps, self.weight, self.bias)
        with torch.no_grad():
            self.num_batches_tracked += 1
            eta = self.next_eta()
            self.eta.copy_(eta)
            c = self.num_features
            keep = (1.0 - eta).to(self.running_var.dtype).repeat_interleave(c)
            eta = eta.to(self.running_mean.dtype).repeat_interleave(c)
            self.running_mean.add_((mean - self.running_mean) * eta)
            self.running_var.mul_(keep).add_(var * eta)
        running_mean, running_var = self.running_mean.clone(), self.running_var.clone()
        per_member = lambda a, b: (a - b).square().view(self.members, -1).mean(1)  # noqa: E731
        self.norm_loss = per_member(mean, running_mean) + per_member(var, running_var)
        return out


# AdaB²N's stacking (here, beside the stacked layer, until AdaB²N is written once for one member or many): each
# member keeps its own kappa, lambd and ada_t0; --adab2n_renorm shapes every member's weights alike.
stackable(Stacking(StackedAdaB2N, StackedAdaB2N.member, frozenset({"kappa", "lambd", "ada_t0"})))(AdaB2N)
