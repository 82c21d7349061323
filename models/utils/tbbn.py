"""Task-Balanced Batch Normalization (TBBN), Cha et al., *Rebalancing Batch Normalization for Exemplar-based
Class-Incremental Learning*, CVPR 2023 (arXiv 2201.12559).

In exemplar-based class-incremental learning a training batch holds ``B_c`` samples of the current task and ``B_p``
replayed ones, ``B_c > B_p``, so BatchNorm's statistics are dominated by the current task. TBBN reshapes the batch
so that each of ``r`` splits of the current samples meets every replayed sample once: the current part
``[B_c, C, H, W]`` is viewed as ``[B_c / r, r·C, H, W]``, the replayed part repeated ``r`` times along the channels
``[B_p, r·C, H, W]``; each (split, channel) is normalised with the mean and biased variance of the concatenation,
whose samples are ``B_c / r`` current and ``B_p`` replayed ones, the affine parameters repeated ``r`` times; the
current part is viewed back and the replayed part averaged over its ``r`` copies. Test time is BatchNorm with the
running statistics.

Reference code: ``csm9493/TaskBalancedBN``, ``src/networks/tbbn.py`` at commit
9261ac0f995c2e67c54e116db7f2ea06ed93523f (line numbers below are that file's), whose later-task running statistics
``stats="output"`` reproduces; the authors' current code (commit c3a5dee, 2024-10-16, unchanged at HEAD c4a939c)
computes them as the default ``stats="balanced"`` does. Outputs and gradients are the same in both commits.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normcl.models.utils.layer_stacking import per_channel, stackable
from normcl.models.utils.norms import copy_matching_state, float32_under_autocast, register_norm
from normcl.utils.core.options import Option, one_of, require

STATS_CHOICES = ("balanced", "output")
STATS = Option(
    "--tbbn_stats",
    "running statistics: balanced (the paper and the authors' current code, c3a5dee: the task-balanced statistics "
    "of the input) or output (their first commit, 9261ac0, from the second task on: the statistics of the output)",
    keyword="stats",
    check=one_of(*STATS_CHOICES),
)


def feasible_splits(stream: int, replayed: int, tasks_completed: int) -> int:
    """``r*``: the largest common divisor ``d`` of ``stream`` and ``replayed`` with ``d <= max(1, T · stream /
    replayed)``, ``T = tasks_completed``; 1 for ``T = 0`` or a batch without replayed samples.

    With ``stream / replayed`` the integer ``batch_ratio`` this is the reference's ``r = batch_ratio · T`` made
    feasible (``tbbn.py`` lines 27-46, 48-62). Where the target is below 1 (DER++: 10 stream samples, 20 replayed,
    ``T = 1``) the reference's ``max(..., default=None)`` (line 45) has no divisor to take and sets
    ``num_splits = None`` (line 62), on which its forward would fail (``C * None``, line 137); 1 is taken here.
    """
    if tasks_completed == 0 or replayed == 0:
        return 1
    common = math.gcd(stream, replayed)
    return max(
        d for d in range(1, common + 1) if common % d == 0 and (d == 1 or d * replayed <= tasks_completed * stream)
    )


@stackable(per_channel())  # K·C channels: each member's channels stay together in every split; stats shared
class TaskBalancedBN(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics balance the current task's samples against the replayed ones.

    Cha et al., CVPR 2023 (arXiv 2201.12559); reference ``csm9493/TaskBalancedBN`` ``src/networks/tbbn.py``. The
    training batch is the stream batch first (``B_c`` samples, ``set_batch_tasks(..., stream=B_c)``), the replayed
    samples after it (``B_p``); ``r = feasible_splits(B_c, B_p, T)`` with ``T`` the tasks completed. With ``r = 1``
    and the default statistics a training forward is ``F.batch_norm``, BatchNorm exactly (the first task always).

    Differences from the reference code:

    (a) **Running statistics.** By default (``stats="balanced"``, the paper's task-balanced statistics) they are
        always the exponential average of the split-averaged per-split mean and unbiased per-split variance of the
        reshaped batch, which the reference computes in its first-task branch (lines 84-111) for any ``r``. From
        the second task on the reference's other branch (lines 156-170) averages the mean and unbiased variance of
        the layer's *output* (over all ``N·H·W`` values) instead, so test-time BatchNorm would normalise with the
        statistics of its own output, which do not describe its input; ``stats="output"`` (``--tbbn_stats output``)
        reproduces that branch.
    (b) **r from the batch.** The reference fixes ``B_c``, ``B_p`` and ``batch_ratio`` at construction (lines 16-24,
        129); here ``B_c`` is the stream batch of each forward, ``B_p`` the rest, and the target ``r`` is
        ``max(1, T · B_c / B_p)``, 1 where the reference's rule has no feasible value (:func:`feasible_splits`).
    (c) **Replayed samples.** In this framework's online replay the replayed part comes from a reservoir buffer that
        also holds samples of the current task; the reference's exemplar memory holds past tasks only.

    The task count ``T`` is a Python int (a training forward reads no device value), carried by checkpoints as the
    layer's extra state. No regulariser (``norm_loss`` is always ``None``).
    """

    prefers_joint_forward: ClassVar[bool] = True  # the reference normalises stream and replayed samples in one batch

    def __init__(self, num_features: int, stats: str = "balanced", **kwargs: Any) -> None:
        require("TBBN: stats", stats, STATS.check)
        super().__init__(num_features, track_running_stats=True, **kwargs)
        self.stats = stats
        self.tasks_completed = 0
        self.norm_loss: Tensor | None = None
        self._stream: int | None = None

    def get_extra_state(self) -> dict[str, int]:
        return {"tasks_completed": self.tasks_completed}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.tasks_completed = int(state["tasks_completed"])

    def set_batch_tasks(self, task_ids: Tensor | None, counts: Tensor | None = None, stream: int | None = None) -> None:
        """The stream batch's size in the next training forward (its first ``stream`` samples); task ids unused."""
        self._stream = stream

    def norm_loss_weight(self, task: int) -> tuple[float, ...]:
        """No regulariser (``norm_loss`` is always ``None``): no weight to give."""
        return ()

    def end_task(self) -> None:
        """One more task completed: from now on the splits balance it against the replayed samples."""
        self.tasks_completed += 1

    def _momentum(self) -> float:
        """This training forward's averaging factor, counted as torch's BatchNorm counts (reference lines 68-76)."""
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    @float32_under_autocast
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:  # BatchNorm with the running statistics (reference lines 115-120, 174-179)
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        stream, self._stream = self._stream, None
        if stream is None:
            if self.tasks_completed > 0:
                raise ValueError(
                    "TBBN: a training forward after the first task needs the stream batch's size: call "
                    "set_batch_tasks(task_ids, counts, stream=<stream samples at the head of the batch>) before it"
                )
            stream = len(input)
        if not 0 <= stream <= len(input):
            raise ValueError(f"TBBN: stream={stream} samples in a batch of {len(input)}")
        r = feasible_splits(stream, len(input) - stream, self.tasks_completed)
        output_stats = self.stats == "output" and self.tasks_completed > 0
        momentum = self._momentum()
        if r == 1 and not output_stats:  # BatchNorm exactly
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps
            )
        return self._balanced(input, stream, r, momentum, output_stats)

    def _balanced(self, input: Tensor, stream: int, r: int, momentum: float, output_stats: bool) -> Tensor:
        """The task-balanced forward with ``r`` splits (reference lines 128-154); running statistics by ``stats``."""
        n, c, h, w = input.shape
        current, replayed = input[:stream], input[stream:]
        batch = torch.cat([current.reshape(stream // r, r * c, h, w), replayed.repeat(1, r, 1, 1)])
        weight, bias = (None if p is None else p.repeat(r) for p in (self.weight, self.bias))
        if output_stats:
            out = F.batch_norm(batch, None, None, weight, bias, True, 0.0, self.eps)
        else:  # each split's average (reference lines 84-102), then their mean (lines 110-111)
            split_mean, split_var = self.running_mean.repeat(r), self.running_var.repeat(r)
            out = F.batch_norm(batch, split_mean, split_var, weight, bias, True, momentum, self.eps)
            with torch.no_grad():
                self.running_mean.copy_(split_mean.view(r, c).mean(0))
                self.running_var.copy_(split_var.view(r, c).mean(0))
        rows = stream // r
        out = torch.cat([out[:rows].reshape(stream, c, h, w), out[rows:].reshape(n - stream, r, c, h, w).mean(1)])
        if output_stats:  # the output's mean and unbiased variance over N·H·W (reference lines 156-170)
            with torch.no_grad():
                var, mean = torch.var_mean(out, [0, 2, 3], correction=1)
                self.running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1.0 - momentum).add_(var, alpha=momentum)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stats={self.stats}"


@register_norm("TBBN", STATS)
def tbbn(bn: nn.BatchNorm2d, *, affine: bool = True, stats: str = "balanced") -> TaskBalancedBN:
    """Task-Balanced BatchNorm with running statistics ``stats``; BN's state is kept."""
    new = TaskBalancedBN(bn.num_features, stats, eps=bn.eps, momentum=bn.momentum, affine=affine)
    copy_matching_state(bn, new)
    return new
