"""``convert_norm``: swapping every BatchNorm of a network for a baseline norm (GN, LN, IN, CN, BRN) or TBBN, its
options and its errors.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from norm_helpers import randomised_bn
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.models.utils.norm_layers import BatchRenorm2d, ContinualNorm2d, batch_renorm, group_norm, layer_norm
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.tbbn import TaskBalancedBN
from normcl.utils.core.errors import UserError

BASELINES = ("BN", "GN", "LN", "IN", "CN", "BRN", "TBBN")


def count_types(net: nn.Module) -> dict[type, int]:
    counts: dict[type, int] = {}
    for m in net.modules():
        counts[type(m)] = counts.get(type(m), 0) + 1
    return counts


# ---------------------------------------------------------------- convert_norm


EXPECTED_TYPES = {
    "BN": nn.BatchNorm2d,
    "GN": nn.GroupNorm,
    "LN": nn.LayerNorm,
    "IN": nn.InstanceNorm2d,
    "CN": ContinualNorm2d,
    "BRN": BatchRenorm2d,
    "TBBN": TaskBalancedBN,
}


@pytest.mark.parametrize("name", BASELINES)
def test_convert_torchvision_resnet18(name: str) -> None:
    net = torchvision.models.resnet18()
    assert count_types(net)[nn.BatchNorm2d] == 20
    old = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net = convert_norm(net, name, example_input=torch.randn(1, 3, 64, 64))
    counts = count_types(net)
    assert counts.get(EXPECTED_TYPES[name], 0) == 20
    if name != "BN":
        assert nn.BatchNorm2d not in counts
    assert not any(m is o for m in net.modules() for o in old)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bn_to_bn_keeps_outputs() -> None:
    torch.manual_seed(0)
    net = ResNet18(num_classes=10, nf=20, in_channels=1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(randomised_bn(m.num_features).state_dict())
    twin = ResNet18(num_classes=10, nf=20, in_channels=1)
    twin.load_state_dict(net.state_dict())
    twin = convert_norm(twin, "BN")
    x = torch.randn(2, 1, 28, 28)
    for train in (False, True):
        net.train(train)
        twin.train(train)
        torch.testing.assert_close(twin(x), net(x), atol=0, rtol=0)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), twin.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("name", BASELINES)
def test_every_norm_trains_project_resnet18(name: str) -> None:
    torch.manual_seed(0)
    net = ResNet18(num_classes=10, nf=20, in_channels=1)
    net = convert_norm(net, name, example_input=torch.zeros(1, 1, 28, 28))
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules()) or name == "BN"
    net.train()
    loss = F.cross_entropy(net(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unknown_norm_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        convert_norm(nn.Sequential(nn.BatchNorm2d(3)), "XN")
    for name in BASELINES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["BN", "GN", "LN", "CN", "BRN", "IN", "TBBN"])
def test_no_affine_layers_have_no_weight(name: str) -> None:
    options = {} if name == "IN" else {"affine": False}  # IN never has affine parameters (torch's default)
    net = convert_norm(
        ResNet18(num_classes=10, nf=20, in_channels=1), name, example_input=torch.zeros(1, 1, 28, 28), **options
    )
    layers = [m for m in net.modules() if isinstance(m, EXPECTED_TYPES[name])]
    assert len(layers) == 20
    for m in layers:
        assert getattr(m, "weight", None) is None and getattr(m, "bias", None) is None
        assert not list(m.parameters())


def test_conversion_keeps_stats_device_and_dtype() -> None:
    bn = randomised_bn(8).double()
    for name in ("BN", "CN", "BRN", "TBBN"):
        new = convert_norm(nn.Sequential(bn), name)[0]
        assert new.running_mean.dtype == torch.float64
        assert torch.equal(new.running_mean, bn.running_mean) and torch.equal(new.weight, bn.weight)
        assert new.num_batches_tracked.item() == 3
    new = convert_norm(nn.Sequential(bn), "BN", affine=False)[0]
    assert torch.equal(new.running_var, bn.running_var) and new.weight is None
    gn = convert_norm(nn.Sequential(bn), "GN")[0]
    assert gn.weight.dtype == torch.float64 and gn.weight.device == bn.weight.device
    single = convert_norm(randomised_bn(4), "GN")
    assert isinstance(single, nn.GroupNorm)


def test_module_without_batch_norm_is_unchanged() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert convert_norm(net, "LN") is net
    assert convert_norm(net, "GN") is net


@pytest.mark.parametrize("name", [*BASELINES, "AdaB2N"])
def test_convert_norm_rejects_an_unknown_keyword_by_name(name: str) -> None:
    net = nn.Sequential(nn.BatchNorm2d(8))
    with pytest.raises(TypeError, match=f"norm '{name}' takes no keyword 'bogus'"):
        convert_norm(net, name, example_input=torch.zeros(1, 8, 2, 2), bogus=1)
    assert isinstance(net[0], nn.BatchNorm2d), "nothing was converted"


def test_convert_norm_names_a_missing_keyword_and_what_in_does_not_take() -> None:
    net = nn.Sequential(nn.BatchNorm2d(8))
    with pytest.raises(TypeError, match="norm 'AdaB2N' needs the keyword 'num_tasks'"):
        convert_norm(net, "AdaB2N", kappa=0.4)
    with pytest.raises(TypeError, match="norm 'IN' takes no keyword 'affine'; its keywords are: none"):
        convert_norm(net, "IN", affine=False)


def test_convert_norm_takes_a_builder_or_a_partial_with_bound_hyper_parameters() -> None:
    net = convert_norm(nn.Sequential(nn.BatchNorm2d(8)), functools.partial(group_norm, groups=2))
    assert isinstance(net[0], nn.GroupNorm) and net[0].num_groups == 2
    net = convert_norm(nn.Sequential(nn.BatchNorm2d(8)), batch_renorm, rmax=1.5)
    assert isinstance(net[0], BatchRenorm2d) and net[0].rmax == 1.5
    with pytest.raises(TypeError, match="takes no keyword 'kappa'"):
        convert_norm(nn.Sequential(nn.BatchNorm2d(8)), group_norm, kappa=0.4)
    net = convert_norm(nn.Sequential(nn.BatchNorm2d(4)), layer_norm, example_input=torch.zeros(1, 4, 3, 3))
    assert isinstance(net[0], nn.LayerNorm) and net[0].normalized_shape == (4, 3, 3)
