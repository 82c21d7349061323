"""Baseline normalisation layers (GN, LN, IN, CN, BRN), checked against hand computations."""

from __future__ import annotations

import pytest
import torch
from norm_helpers import randomised_bn
from torch import Tensor, nn

from normcl.backbone.resnet18 import ResNet18
from normcl.models.utils.norm_layers import (
    BatchRenorm2d,
    ContinualNorm2d,
    batch_renorm,
    continual_norm,
    group_count,
    group_norm,
    instance_norm,
    layer_norm,
)
from normcl.models.utils.norms import NORMS, convert_norm, probe_input_shapes

EPS = 1e-5


def per_channel(t: Tensor) -> Tensor:
    return t[None, :, None, None]


def hand_group_norm(x: Tensor, groups: int) -> Tensor:
    n = x.shape[0]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = xg.var(-1, unbiased=False, keepdim=True)
    return ((xg - mean) / (var + EPS).sqrt()).reshape_as(x)


def hand_batch_norm(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    out = (x - per_channel(mean)) / per_channel((var + EPS).sqrt())
    if weight is not None and bias is not None:
        out = out * per_channel(weight) + per_channel(bias)
    return out


# ---------------------------------------------------------------- GN


@pytest.mark.parametrize(
    ("channels", "groups"), [(20, 20), (40, 20), (80, 20), (160, 32), (64, 32), (32, 32), (48, 24), (3, 3), (1, 1)]
)
def test_group_count_rule(channels: int, groups: int) -> None:
    assert group_count(channels) == groups


def test_group_count_target_and_invalid() -> None:
    assert group_count(64, 8) == 8
    assert group_count(20, 8) == 5
    with pytest.raises(ValueError):
        group_count(0)
    with pytest.raises(ValueError):
        group_count(16, 0)


def test_group_norm_layer_copies_affine() -> None:
    bn = randomised_bn(80)
    gn = group_norm(bn)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 20 and gn.num_channels == 80
    assert torch.equal(gn.weight, bn.weight) and torch.equal(gn.bias, bn.bias)
    x = torch.randn(2, 80, 3, 3)
    expected = hand_group_norm(x, 20) * per_channel(bn.weight) + per_channel(bn.bias)
    torch.testing.assert_close(gn(x), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- LN


def test_layer_norm_normalises_each_sample_over_chw() -> None:
    ln = layer_norm(nn.BatchNorm2d(4), shape=(4, 5, 6))
    assert isinstance(ln, nn.LayerNorm) and tuple(ln.normalized_shape) == (4, 5, 6)
    x = torch.randn(3, 4, 5, 6) * torch.tensor([1.0, 4.0, 0.2])[:, None, None, None] + 7
    y = ln(x).flatten(1)
    torch.testing.assert_close(y.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_layer_norm_needs_shape() -> None:
    assert NORMS.get("LN").needs_shape and not NORMS.get("GN").needs_shape
    with pytest.raises(TypeError, match="shape"):
        layer_norm(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="channels"):
        layer_norm(nn.BatchNorm2d(4), shape=(5, 2, 2))
    with pytest.raises(ValueError, match="example_input"):
        convert_norm(ResNet18(num_classes=10, nf=20, in_channels=1), "LN")


def test_probe_records_resnet18_shapes_and_restores_state() -> None:
    net = ResNet18(num_classes=10, nf=20, in_channels=1)
    net.train()
    net.layer3.eval()
    modes = {name: m.training for name, m in net.named_modules()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shapes = dict(_named(net, probe_input_shapes(net, torch.randn(1, 1, 28, 28))))
    assert len(shapes) == 20
    assert shapes["bn1"] == (20, 28, 28)
    assert shapes["layer1.1.bn2"] == (20, 28, 28)
    assert shapes["layer2.0.bn1"] == (40, 14, 14)
    assert shapes["layer2.0.shortcut.1"] == (40, 14, 14)
    assert shapes["layer3.0.bn2"] == (80, 7, 7)
    assert shapes["layer4.0.bn1"] == (160, 4, 4)
    assert shapes["layer4.1.bn2"] == (160, 4, 4)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(not m._forward_pre_hooks for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def _named(net: nn.Module, by_module: dict[nn.Module, tuple[int, int, int]]) -> list[tuple[str, tuple[int, int, int]]]:
    return [(name, by_module[m]) for name, m in net.named_modules() if m in by_module]


def test_convert_layer_norm_uses_probed_shapes() -> None:
    net = ResNet18(num_classes=10, nf=20, in_channels=1)
    net = convert_norm(net, "LN", example_input=torch.zeros(1, 1, 28, 28))
    assert tuple(net.bn1.normalized_shape) == (20, 28, 28)
    assert tuple(net.layer2[0].bn2.normalized_shape) == (40, 14, 14)
    assert tuple(net.layer3[0].shortcut[1].normalized_shape) == (80, 7, 7)
    assert tuple(net.layer4[1].bn2.normalized_shape) == (160, 4, 4)
    assert net.training


# ---------------------------------------------------------------- IN


def test_instance_norm_per_sample_per_channel() -> None:
    layer = instance_norm(randomised_bn(3))
    assert isinstance(layer, nn.InstanceNorm2d) and layer.weight is None and layer.running_mean is None
    x = torch.randn(4, 3, 5, 5) * 3 + torch.arange(12.0).reshape(4, 3, 1, 1)
    y = layer(x)
    torch.testing.assert_close(y.mean((2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((2, 3), unbiased=False), torch.ones(4, 3), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- CN


@pytest.mark.parametrize("momentum", [0.1, None])
def test_continual_norm_is_bn_of_gn(momentum: float | None) -> None:
    torch.manual_seed(0)
    bn = randomised_bn(8, momentum=momentum)
    cn = continual_norm(bn, groups=4)
    assert isinstance(cn, ContinualNorm2d) and cn.groups == 4
    reference = nn.BatchNorm2d(8, momentum=momentum)
    reference.load_state_dict(bn.state_dict())
    for step in range(3):
        x = torch.randn(6, 8, 4, 4) * 2 + step
        g = hand_group_norm(x, 4)
        expected = hand_batch_norm(g, g.mean((0, 2, 3)), g.var((0, 2, 3), unbiased=False), bn.weight, bn.bias)
        torch.testing.assert_close(cn(x), expected, atol=1e-5, rtol=1e-5)
        reference(g)
        torch.testing.assert_close(cn.running_mean, reference.running_mean)
        torch.testing.assert_close(cn.running_var, reference.running_var)
        assert cn.num_batches_tracked.item() == reference.num_batches_tracked.item() == 4 + step
    cn.eval()
    x = torch.randn(2, 8, 4, 4)
    expected = hand_batch_norm(hand_group_norm(x, 4), cn.running_mean, cn.running_var, cn.weight, cn.bias)
    torch.testing.assert_close(cn(x), expected, atol=1e-5, rtol=1e-5)


def test_continual_norm_default_groups() -> None:
    assert continual_norm(nn.BatchNorm2d(80)).groups == 20
    assert continual_norm(nn.BatchNorm2d(64)).groups == 32
    with pytest.raises(ValueError):
        ContinualNorm2d(10, groups=4)


# ---------------------------------------------------------------- BRN


def brn_batch() -> Tensor:
    """Channel 0: tiny std, large mean (r and d clipped low/high); 1: unclipped; 2: huge std, very negative mean."""
    torch.manual_seed(1)
    z = torch.randn(8, 3, 3, 3)
    z = (z - z.mean((0, 2, 3), keepdim=True)) / z.std((0, 2, 3), unbiased=False, keepdim=True)
    return z * per_channel(torch.tensor([0.1, 2.0, 10.0])) + per_channel(torch.tensor([7.0, -0.5, -8.0]))


def test_brn_first_step_clips_r_and_d() -> None:
    brn = BatchRenorm2d(3, rmax=3.0, dmax=5.0)
    with torch.no_grad():
        brn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        brn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = brn_batch()
    mean = x.mean((0, 2, 3))
    std = (x.var((0, 2, 3), unbiased=False) + EPS).sqrt()
    sigma = (1 + EPS) ** 0.5
    r, d = brn.corrections(mean, std)
    torch.testing.assert_close(r, torch.tensor([1 / 3, 2.0 / sigma, 3.0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d, torch.tensor([5.0, -0.5 / sigma, -5.0]), atol=1e-5, rtol=1e-5)
    out = brn(x)
    x_hat = (x - per_channel(mean)) / per_channel(std) * per_channel(r) + per_channel(d)
    torch.testing.assert_close(out, x_hat * per_channel(brn.weight) + per_channel(brn.bias), atol=1e-5, rtol=1e-5)
    n = x.numel() / 3
    torch.testing.assert_close(brn.running_mean, 0.1 * mean)
    torch.testing.assert_close(brn.running_var, 0.9 + 0.1 * x.var((0, 2, 3), unbiased=False) * n / (n - 1))
    assert brn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("momentum", [0.1, None])
def test_brn_without_room_to_correct_is_bn(momentum: float | None) -> None:
    bn = randomised_bn(3, momentum=momentum)
    brn = batch_renorm(bn, rmax=1.0, dmax=0.0)
    assert isinstance(brn, BatchRenorm2d)
    for step in range(3):
        x = (brn_batch() + step).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        out, ref = brn(x), bn(x_ref)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(out)
        out.backward(grad)
        ref.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(brn.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(brn.running_mean, bn.running_mean)
        torch.testing.assert_close(brn.running_var, bn.running_var)
        assert brn.num_batches_tracked.item() == bn.num_batches_tracked.item()


def test_brn_gradient_treats_r_and_d_as_constants() -> None:
    brn = BatchRenorm2d(3)
    x = brn_batch().requires_grad_()
    mean = x.mean((0, 2, 3))
    std = (x.var((0, 2, 3), unbiased=False) + EPS).sqrt()
    r, d = brn.corrections(mean, std)
    assert not r.requires_grad and not d.requires_grad
    with torch.no_grad():
        r_const, d_const = r.clone(), d.clone()
    manual = (x - per_channel(mean)) / per_channel(std) * per_channel(r_const) + per_channel(d_const)
    grad = torch.randn_like(manual)
    (expected,) = torch.autograd.grad(manual, x, grad)
    (actual,) = torch.autograd.grad(brn(x), x, grad)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_brn_eval_is_bn_eval() -> None:
    bn = randomised_bn(3)
    brn = batch_renorm(bn)
    bn.eval()
    brn.eval()
    x = brn_batch()
    torch.testing.assert_close(brn(x), bn(x))
    assert brn.num_batches_tracked.item() == 3


def test_brn_options_and_validation() -> None:
    bn = nn.BatchNorm2d(4)
    layer = batch_renorm(bn, rmax=2.0, dmax=1.5)
    assert (layer.rmax, layer.dmax) == (2.0, 1.5)
    layer = batch_renorm(bn)
    assert (layer.rmax, layer.dmax) == (3.0, 5.0)
    with pytest.raises(ValueError, match=r"BRN: rmax must be >= 1, got 0.5"):
        batch_renorm(bn, rmax=0.5)
    with pytest.raises(ValueError, match=r"BRN: dmax must be >= 0, got -1"):
        batch_renorm(bn, dmax=-1.0)
    flags = {o.flag: (o.keyword, o.default, o.type) for o in NORMS.get("BRN").options}
    assert flags == {"--brn_rmax": ("rmax", 3.0, float), "--brn_dmax": ("dmax", 5.0, float)}
