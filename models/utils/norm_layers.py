"""Baseline normalisation layers for ``--nl``, each built from the ``nn.BatchNorm2d`` it replaces.

* ``GN``  Group Normalization (Wu & He, ECCV 2018, arXiv 1803.08494).
* ``LN``  Layer Normalization (Ba et al., 2016, arXiv 1607.06450) over C x H x W.
* ``IN``  Instance Normalization (Ulyanov et al., 2016, arXiv 1607.08022).
* ``CN``  Continual Normalization (Pham et al., ICLR 2022, arXiv 2203.16102):
  group norm without affine, then batch norm.
* ``BRN`` Batch Renormalization (Ioffe, NeurIPS 2017, arXiv 1702.03275).

These are the comparison points of the AdaB²N paper (Lyu et al., NeurIPS 2023,
arXiv 2310.08855). Every builder takes ``(bn, *, <its keywords>)``; BRN declares its
clipping bounds as command-line options (``--brn_rmax``, ``--brn_dmax``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normcl.models.utils.layer_stacking import per_channel, stackable
from normcl.models.utils.norms import Shape, copy_matching_state, float32_under_autocast, register_norm
from normcl.utils.core.options import Option, at_least, require

RMAX = Option("--brn_rmax", "clip of the scale correction r to [1/rmax, rmax]", keyword="rmax", check=at_least(1))
DMAX = Option("--brn_dmax", "clip of the shift correction d to [-dmax, dmax]", keyword="dmax", check=at_least(0))


def group_count(channels: int, target: int = 32) -> int:
    """Number of groups for ``channels``: ``target`` if it divides them, else their largest divisor <= ``target``.

    The reduced ResNet-18 (nf=20) has widths 20, 40, 80, 160, which 32 does
    not all divide: with ``target=32`` they get 20, 20, 20 and 32 groups
    (160 = 32 x 5), and 64 channels get 32.
    """
    if channels < 1 or target < 1:
        raise ValueError(f"channels and target must be >= 1, got {channels} and {target}")
    return next(g for g in range(min(target, channels), 0, -1) if channels % g == 0)


@register_norm("GN")
def group_norm(bn: nn.BatchNorm2d, *, affine: bool = True, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm: per-sample statistics, so no running statistics to drift across tasks."""
    new = nn.GroupNorm(group_count(bn.num_features, groups), bn.num_features, eps=bn.eps, affine=affine)
    copy_matching_state(bn, new)
    return new


@register_norm("LN")
def layer_norm(bn: nn.BatchNorm2d, *, shape: Shape, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm over the whole C x H x W feature map of each sample (its size comes from ``convert_norm``'s probe)."""
    if shape[0] != bn.num_features:
        raise ValueError(f"LN shape {tuple(shape)} does not match the layer's {bn.num_features} channels")
    return nn.LayerNorm(list(shape), eps=bn.eps, elementwise_affine=affine)


@register_norm("IN")
def instance_norm(bn: nn.BatchNorm2d) -> nn.InstanceNorm2d:
    """InstanceNorm with torch's defaults (no affine, no running stats), as the reference uses it."""
    return nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=False, track_running_stats=False)


@stackable(per_channel("num_features", "groups"))  # K·C channels in K·groups groups: per-member group norm
class ContinualNorm2d(nn.BatchNorm2d):
    """Continual Normalization: a parameter-free group norm, then ordinary batch norm.

    The group norm removes each sample's own scale and shift first, so the
    running statistics of the batch-norm stage are less biased towards the
    latest task (Pham et al., 2022). Subclassing ``BatchNorm2d`` keeps the
    running statistics, state-dict keys and momentum semantics of BN.
    """

    def __init__(self, num_features: int, groups: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        if num_features % groups != 0:
            raise ValueError(f"CN: {groups} groups do not divide {num_features} channels")
        self.groups = groups

    def running_stats_input(self, x: Tensor) -> Tensor:
        """What the running statistics describe: the group-normalised input (``utils/norm_diagnostics.py``)."""
        return F.group_norm(x, self.groups, None, None, self.eps)

    @float32_under_autocast
    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        return super().forward(self.running_stats_input(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


@register_norm("CN", without_affine=True)  # as the reference launcher, and the official code, whose optimiser has none
def continual_norm(bn: nn.BatchNorm2d, *, affine: bool = True, groups: int = 32) -> ContinualNorm2d:
    """Continual Normalization with the GN group rule (``group_count``); BN's state is kept."""
    new = ContinualNorm2d(
        bn.num_features, group_count(bn.num_features, groups), eps=bn.eps, momentum=bn.momentum, affine=affine
    )
    copy_matching_state(bn, new)
    return new


@stackable(per_channel())  # per channel; rmax and dmax shared by the members
class BatchRenorm2d(nn.BatchNorm2d):
    """Batch Renormalization: batch-norm training whose output is corrected towards the running statistics.

    In training ``x_hat = (x - mu_B) / sigma_B * r + d`` with the constants
    (no gradient) ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``, so training and inference
    see the same normalisation when the batch is small or non-i.i.d. (Ioffe, 2017).
    ``sigma_B = sqrt(var_B + eps)`` with the biased batch variance,
    ``sigma = sqrt(running_var + eps)``. Running statistics are updated as in
    torch's BatchNorm (unbiased variance, ``momentum=None`` = cumulative
    average); evaluation is plain BatchNorm with the running statistics.
    """

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0, **kwargs: Any) -> None:
        require("BRN: rmax", rmax, RMAX.check)
        require("BRN: dmax", dmax, DMAX.check)
        super().__init__(num_features, **kwargs)
        self.rmax = float(rmax)
        self.dmax = float(dmax)

    def corrections(self, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """Clipped ``(r, d)`` of batch ``mean``/``std`` against the running statistics, detached from the graph."""
        assert self.running_mean is not None and self.running_var is not None
        running_std = (self.running_var + self.eps).sqrt()
        r = (std.detach() / running_std).clamp(1.0 / self.rmax, self.rmax)
        d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.dmax, self.dmax)
        return r.detach(), d.detach()

    @float32_under_autocast
    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        n = x.numel() // x.size(1)
        if n <= 1:
            raise ValueError(f"BRN: expected more than 1 value per channel when training, got input {tuple(x.shape)}")
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        std = (var + self.eps).sqrt()
        r, d = self.corrections(mean, std)
        x_hat = (x - mean[None, :, None, None]) / std[None, :, None, None] * r[None, :, None, None]
        x_hat = x_hat + d[None, :, None, None]
        if self.weight is not None and self.bias is not None:
            x_hat = x_hat * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        self._update_running_stats(mean.detach(), var.detach() * (n / (n - 1)))
        return x_hat

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Exponential (or, with ``momentum=None``, cumulative) average, exactly as torch's BatchNorm."""
        assert self.running_mean is not None and self.running_var is not None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1.0 - momentum).add_(unbiased_var, alpha=momentum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}"


@register_norm("BRN", RMAX, DMAX)
def batch_renorm(bn: nn.BatchNorm2d, *, affine: bool = True, rmax: float = 3.0, dmax: float = 5.0) -> BatchRenorm2d:
    """Batch Renormalization with the clipping bounds ``rmax`` / ``dmax``; BN's state is kept."""
    new = BatchRenorm2d(bn.num_features, rmax, dmax, eps=bn.eps, momentum=bn.momentum, affine=affine)
    copy_matching_state(bn, new)
    return new
