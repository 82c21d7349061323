"""AdaB²N against hand-computed statistics and the reference arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.task_aware import task_aware_layers


def train_forward(layer: AdaB2N, x: torch.Tensor, tasks: list[int] | None) -> torch.Tensor:
    layer.train()
    layer.set_batch_tasks(None if tasks is None else torch.tensor(tasks, device=x.device))
    return layer(x)


def test_kappa_one_is_an_ema_with_the_momentum() -> None:
    layer = AdaB2N(2, num_tasks=3, kappa=1.0, momentum=0.1)
    expected = torch.zeros(2)
    torch.manual_seed(0)
    for _ in range(4):
        x = torch.randn(6, 2, 3, 3)
        train_forward(layer, x, [0] * 6)
        expected = 0.9 * expected + 0.1 * x.mean([0, 2, 3])
        assert layer.eta.item() == pytest.approx(0.1)
    torch.testing.assert_close(layer.running_mean, expected)


def test_kappa_zero_is_the_cumulative_average_and_never_resets() -> None:
    layer = AdaB2N(2, num_tasks=3, kappa=0.0)
    batches = [torch.full((4, 2, 2, 2), float(v)) + torch.arange(4.0).view(4, 1, 1, 1) for v in (1, 5, -3)]
    train_forward(layer, batches[0], [0] * 4)
    train_forward(layer, batches[1], [0] * 4)
    layer.end_task()  # the counter keeps running across the boundary
    train_forward(layer, batches[2], None)
    # batch means 2.5, 6.5, -1.5 (values v + {0,1,2,3}); plain batch statistics in every batch
    assert layer.eta.item() == pytest.approx(1 / 3)
    torch.testing.assert_close(layer.running_mean, torch.full((2,), (2.5 + 6.5 - 1.5) / 3))
    # biased variance of {0,1,2,3} is 1.25 in every batch; eta_1 = 1 overwrites the initial 1, then averages
    torch.testing.assert_close(layer.running_var, torch.full((2,), 1.25))


def test_eta_recursion_for_kappa_0_4() -> None:
    layer = AdaB2N(1, num_tasks=2, kappa=0.4, momentum=0.1)
    eta1 = 0.1**0.4  # 0.39810717...
    eta2 = eta1 / (eta1 + 0.9**0.4)  # 0.39810717 / (0.39810717 + 0.95873276) = 0.29340...
    eta3 = eta2 / (eta2 + 0.9**0.4)
    x = torch.randn(5, 1, 2, 2)
    got = []
    for _ in range(3):
        train_forward(layer, x, None)
        got.append(layer.eta.item())
    assert got == pytest.approx([eta1, eta2, eta3], rel=1e-12)
    assert eta2 == pytest.approx(0.293408, abs=1e-6)


def test_statistics_are_biased_batch_statistics_for_task_zero_and_output_equals_bn() -> None:
    torch.manual_seed(1)
    x = torch.randn(8, 3, 5, 5)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    layer = AdaB2N.from_bn(bn, num_tasks=4)
    out = train_forward(layer, x, [0] * 8)
    torch.testing.assert_close(out, bn(x), atol=1e-5, rtol=1e-5)
    # running mean as BN; running var WITHOUT Bessel's correction (the reference's choice)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * x.var([0, 2, 3], unbiased=False))


def test_equal_counts_and_zero_logits_give_equal_task_weights() -> None:
    layer = AdaB2N(1, num_tasks=3)
    layer.end_task()
    layer.end_task()
    w = layer.sample_weights(torch.tensor([0, 0, 1, 1, 2, 2]))
    torch.testing.assert_close(w, torch.full((6,), 1 / 6))


def test_weighted_mean_and_variance_by_hand() -> None:
    # T = 1: task 0 has 1 sample, task 1 has 3. Logits (0, log 3): c = (1 + 1, 3 + 3) = (2, 6) -> pi = (1/4, 3/4)
    layer = AdaB2N(1, num_tasks=2, momentum=0.5)
    with torch.no_grad():
        layer.task_weight.copy_(torch.tensor([0.0, math.log(3.0)]))
    layer.end_task()
    x = torch.tensor([8.0, 0.0, 2.0, 4.0]).view(4, 1, 1, 1)
    out = train_forward(layer, x, [0, 1, 1, 1])
    # s = (1/4, 1/4, 1/4, 1/4): mu = 3.5; var = mean((x - 3.5)^2) = (20.25 + 12.25 + 2.25 + 0.25) / 4 = 8.75
    torch.testing.assert_close(out.flatten(), (x.flatten() - 3.5) / math.sqrt(8.75 + 1e-5))
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.5 * 3.5]))
    torch.testing.assert_close(layer.running_var, torch.tensor([0.5 * 1 + 0.5 * 8.75]))
    # the regulariser compares with the running statistics *after* the update
    expected = (3.5 - 1.75) ** 2 + (8.75 - 4.875) ** 2
    assert layer.norm_loss.item() == pytest.approx(expected)


def test_absent_task_keeps_its_weight_unless_renormalised() -> None:
    ids = torch.tensor([1, 1, 1, 1])  # task 0 seen but absent: c = (1 + 0, 1 + 4) -> pi = (1/6, 5/6)
    quirk = AdaB2N(1, num_tasks=2)
    quirk.end_task()
    torch.testing.assert_close(quirk.sample_weights(ids), torch.full((4,), 5 / 6 / 4))
    fixed = AdaB2N(1, num_tasks=2, renorm=True)
    fixed.end_task()
    torch.testing.assert_close(fixed.sample_weights(ids), torch.full((4,), 1 / 4))


def test_gradient_reaches_the_task_logits_through_the_statistics() -> None:
    torch.manual_seed(2)
    layer = AdaB2N(3, num_tasks=3)
    layer.end_task()
    out = train_forward(layer, torch.randn(6, 3, 4, 4), [0, 1, 1, 1, 1, 1])
    (out.square().mean() + layer.norm_loss.sum()).backward()
    (grad,) = layer.task_weight.grad  # the one member's, [num_tasks]
    assert grad[:2].abs().min() > 0
    assert grad[2] == 0  # tasks not yet seen take no part
    assert "task" in next(n for n, p in layer.named_parameters() if p is layer.task_weight)


def test_eval_uses_the_running_statistics() -> None:
    layer = AdaB2N(2, num_tasks=2)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]))
    layer.eval()
    x = torch.randn(3, 2, 2, 2)
    expected = (x - torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)) / torch.sqrt(
        torch.tensor([4.0, 0.25]).view(1, 2, 1, 1) + 1e-5
    )
    torch.testing.assert_close(layer(x), expected)


def test_state_dict_round_trip_keeps_eta_and_task_state() -> None:
    torch.manual_seed(3)
    a = AdaB2N(2, num_tasks=3, kappa=0.4)
    for t in range(2):
        for _ in range(3):
            train_forward(a, torch.randn(4, 2, 3, 3), [t] * 4)
        a.end_task()
    state = a.state_dict()
    assert {"task_weight", "tasks_completed", "eta", "num_batches_tracked"} <= set(state)
    assert (state["task_weight"].shape, state["eta"].shape) == ((3,), ()), "a run alone's shapes, as ever"
    b = AdaB2N(2, num_tasks=3, kappa=0.4)
    b.load_state_dict(state)
    x = torch.randn(6, 2, 3, 3)
    tasks = [0, 1, 2, 2, 2, 2]
    torch.testing.assert_close(train_forward(a, x, tasks), train_forward(b, x, tasks))
    torch.testing.assert_close(a.running_var, b.running_var)
    assert a.eta.item() == b.eta.item()


def test_reference_arithmetic_on_a_random_case() -> None:
    """Compare with a direct transcription of the reference's formulas (unique/counts based)."""
    torch.manual_seed(4)
    layer = AdaB2N(4, num_tasks=5, kappa=0.7)
    with torch.no_grad():
        layer.task_weight.normal_()
    for _ in range(3):
        layer.end_task()
    x = torch.randn(10, 4, 3, 3)
    ids = torch.tensor([0, 2, 2, 3, 3, 3, 3, 3, 3, 3])
    out = train_forward(layer, x, ids.tolist())
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    extended = torch.zeros(4)
    extended[uniq] = counts.float()
    concentration = layer.task_weight.detach()[0, :4].exp() + extended
    sample_weights = (concentration / concentration.sum())[ids] / counts[inverse]
    mean = x.mean([2, 3]).t().matmul(sample_weights).view(1, -1, 1, 1)
    var = (x - mean).square().mean([2, 3]).t().matmul(sample_weights).view(1, -1, 1, 1)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + 1e-5))
    eta = 0.1**0.7
    torch.testing.assert_close(layer.running_mean, eta * mean.flatten())
    torch.testing.assert_close(layer.running_var, (1 - eta) + eta * var.flatten())


def test_gradients_equal_autograd_of_the_reference_formulas() -> None:
    """float64: the one-pass statistics (with their hand-written backward) give the reference's gradients for the
    input, the affine parameters and the task logits, through the output and the regulariser, with a seen task
    missing from the batch (weights summing to less than one)."""
    torch.manual_seed(5)
    layer = AdaB2N(4, num_tasks=5, kappa=0.4).double()
    with torch.no_grad():
        layer.task_weight.normal_()
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    for _ in range(3):
        layer.end_task()
    x = (torch.randn(10, 4, 3, 3, dtype=torch.float64) + 2.0).requires_grad_()
    ids = torch.tensor([0, 0, 3, 3, 3, 3, 3, 3, 3, 3])  # tasks 1 and 2 seen, absent here
    probe = torch.randn(10, 4, 3, 3, dtype=torch.float64)
    out = train_forward(layer, x, ids.tolist())
    ((out * probe).sum() + layer.norm_loss.sum()).backward()
    got = [x.grad, layer.weight.grad, layer.bias.grad, layer.task_weight.grad[0]]

    params = [x.detach().clone().requires_grad_()] + [
        p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias, layer.task_weight[0])
    ]
    xr, weight, bias, logits = params
    counts = torch.bincount(ids, minlength=5).double()
    concentration = (logits.exp() + counts)[:4]
    sample_weights = (concentration / concentration.sum())[ids] / counts[ids]
    mean = xr.mean([2, 3]).t().matmul(sample_weights).view(1, -1, 1, 1)
    var = (xr - mean).square().mean([2, 3]).t().matmul(sample_weights).view(1, -1, 1, 1)
    ref = (xr - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    loss = torch.nn.functional.mse_loss(mean.flatten(), layer.running_mean) + torch.nn.functional.mse_loss(
        var.flatten(), layer.running_var
    )
    ((ref * probe).sum() + loss).backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, p in zip(got, params, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
    assert got[3][4] == 0 and got[3][:3].abs().min() > 0  # task 4 not yet seen takes no part


def test_float32_statistics_stay_exact_when_the_mean_dwarfs_the_spread() -> None:
    """Mean 1000 times the standard deviation: the one-pass moments are taken about the first sample's means, so float32
    keeps the variance to float32's precision (a plain ``E[x²] − μ²`` loses every digit here)."""
    torch.manual_seed(6)
    x = torch.randn(20, 4, 6, 6, dtype=torch.float64) + 1000.0
    ids = (torch.arange(20) >= 10).long().tolist()
    layers = [AdaB2N(4, num_tasks=5, kappa=0.4).to(dtype) for dtype in (torch.float32, torch.float64)]
    outs = []
    for layer in layers:
        layer.end_task()
        outs.append(train_forward(layer, x.to(layer.running_var.dtype), ids))
    single, double = layers
    torch.testing.assert_close(single.running_var.double(), double.running_var, rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[0].double(), outs[1], rtol=0, atol=1e-3)


def test_convert_norm_swaps_every_batchnorm_and_keeps_state() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
    net = convert_norm(net, "AdaB2N", num_tasks=5)
    layers = task_aware_layers(net)
    assert len(layers) == 2 and all(isinstance(m, AdaB2N) and isinstance(m, nn.BatchNorm2d) for m in layers)
    torch.testing.assert_close(net[1].running_mean, torch.full((4,), 0.3))
    assert net[1].task_weight.shape == (1, 5) and net[1].state_dict()["task_weight"].shape == (5,)


def test_convert_norm_builds_the_hyper_parameters_it_is_given() -> None:
    """The usage of adab2n.py's docstring: every layer gets exactly these options (they were once dropped)."""
    net = convert_norm(ResNet18(num_classes=10, nf=8, in_channels=1), "AdaB2N", num_tasks=5, kappa=0.4, lambd=0.1)
    layers = task_aware_layers(net)
    assert len(layers) == 20
    assert {(m.num_tasks, m.kappa, m.lambd, m.ada_t0, m.renorm) for m in layers} == {(5, (0.4,), (0.1,), (0,), False)}
    assert [layers[0].norm_loss_weight(t) for t in (0, 1)] == [(0.1,), (0.1,)]
    net = convert_norm(ResNet18(num_classes=10, nf=8, in_channels=1), "AdaB2N", num_tasks=5, lambd=2.0, ada_t0=1)
    assert [task_aware_layers(net)[0].norm_loss_weight(t) for t in (0, 1, 4)] == [(0.0,), (2.0,), (2.0,)]


def test_bad_hyper_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="kappa"):
        AdaB2N(2, num_tasks=2, kappa=1.5)
    layer = AdaB2N(2, num_tasks=2)
    layer.train()
    layer.set_batch_tasks(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="3 samples"):
        layer(torch.randn(3, 2, 2, 2))


def test_separate_forwards_keep_each_regulariser_differentiable() -> None:
    layer = AdaB2N(2, num_tasks=2)
    layer.end_task()
    losses = []
    for tasks in ([1, 1, 1], [0, 0]):
        train_forward(layer, torch.randn(len(tasks), 2, 2, 2), tasks)
        losses.append(layer.norm_loss)
    torch.stack(losses).sum().backward()  # would fail if a later in-place update broke the first graph
    assert layer.task_weight.grad is not None and layer.task_weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu_arithmetic() -> None:
    """The same layer on the GPU gives the CPU's outputs, statistics and gradients (float64, so no TF32 or
    reduction-order differences hide a device-specific bug)."""
    torch.manual_seed(7)
    cpu = AdaB2N(4, num_tasks=4, kappa=0.4).double()
    with torch.no_grad():
        cpu.task_weight.normal_()
    cpu.end_task()
    cpu.end_task()
    gpu = AdaB2N(4, num_tasks=4, kappa=0.4).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    for step in range(3):
        x = torch.randn(12, 4, 5, 5, dtype=torch.float64)
        tasks = [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2] if step != 1 else [2] * 12
        out_cpu = train_forward(cpu, x.requires_grad_(), tasks)
        out_gpu = train_forward(gpu, x.detach().cuda().requires_grad_(), tasks)
        torch.testing.assert_close(out_gpu.cpu(), out_cpu)
        (out_cpu.square().mean() + cpu.norm_loss).backward()
        (out_gpu.square().mean() + gpu.norm_loss).backward()
    for name, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[name].cpu(), value, msg=name)
    torch.testing.assert_close(gpu.task_weight.grad.cpu(), cpu.task_weight.grad)
    torch.testing.assert_close(gpu.weight.grad.cpu(), cpu.weight.grad)
    cpu.eval()
    gpu.eval()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x))
