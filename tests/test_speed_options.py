"""``--amp``, ``--channels_last``, ``--compile`` and the once-per-batch task counts of the task-aware protocol."""

from __future__ import annotations

import pytest
import torch
from test_models import small_model
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.norm_layers import BatchRenorm2d, ContinualNorm2d
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.task_aware import task_aware_layers, task_counts
from normcl.models.utils.tbbn import TaskBalancedBN


def test_task_counts_by_hand() -> None:
    ids = torch.tensor([2, 0, 2, 2, 1, 0])
    assert task_counts(ids, 5).tolist() == [2.0, 1.0, 3.0, 0.0, 0.0]


def test_shared_counts_give_the_same_statistics_as_counting_per_layer() -> None:
    torch.manual_seed(0)
    x, ids = torch.randn(7, 3, 4, 4), torch.tensor([1, 1, 1, 0, 0, 1, 0])
    own, shared = AdaB2N(3, num_tasks=4, kappa=0.4), AdaB2N(3, num_tasks=4, kappa=0.4)
    for layer in (own, shared):
        layer.end_task()
        layer.task_weight.data = torch.tensor([0.3, -0.2, 0.1, 0.5])
    own.set_batch_tasks(ids)
    shared.set_batch_tasks(ids, task_counts(ids, 4))
    assert torch.equal(own(x), shared(x))
    assert torch.equal(own.running_mean, shared.running_mean) and torch.equal(own.running_var, shared.running_var)
    assert torch.equal(own.norm_loss, shared.norm_loss)


@pytest.mark.parametrize(
    "make", [lambda: AdaB2N(4, num_tasks=2, kappa=0.4), lambda: BatchRenorm2d(4), lambda: TaskBalancedBN(4)]
)
def test_norm_statistics_stay_float32_under_bf16_autocast(make) -> None:
    """Under ``--amp`` a hand-written layer sees the bf16 activation but computes in float32, exactly as it would
    on the float32 copy of that activation outside autocast."""
    torch.manual_seed(1)
    x = torch.randn(6, 4, 5, 5).to(torch.bfloat16)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    amp_layer, ref = make(), make()
    for layer in (amp_layer, ref):
        if isinstance(layer, AdaB2N):
            layer.end_task()
            layer.set_batch_tasks(ids)
        if isinstance(layer, TaskBalancedBN):  # two tasks completed: 4 stream samples in 2 splits, 2 replayed
            layer.end_task()
            layer.end_task()
            layer.set_batch_tasks(ids, stream=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = amp_layer(x)
    expected = ref(x.float())
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert torch.equal(amp_layer.running_mean, ref.running_mean)
    assert amp_layer.running_mean.dtype == torch.float32


def test_continual_norm_under_autocast_matches_float32() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 8, 3, 3).to(torch.bfloat16)
    a, b = ContinualNorm2d(8, groups=2), ContinualNorm2d(8, groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a(x)
    assert out.dtype == torch.float32 and torch.equal(out, b(x.float()))


def test_amp_model_returns_float32_logits_and_runs_the_convolutions_in_bf16() -> None:
    model = small_model("er_ace", "--amp", "1", "--nl", "AdaB2N")
    seen: list[torch.dtype] = []
    model.net.inner.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    out = model(torch.randn(1, 3, 1, 28, 28))  # one member's batch
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    plain = small_model("er_ace", "--nl", "AdaB2N")
    assert plain(torch.randn(1, 3, 1, 28, 28)).dtype == torch.float32


def test_channels_last_changes_the_layout_not_the_function() -> None:
    torch.manual_seed(3)
    reference = small_model("er", "--nl", "AdaB2N")
    converted = small_model("er", "--nl", "AdaB2N", "--channels_last", "1")
    converted.net.load_state_dict(reference.net.state_dict())
    assert converted.net.inner.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not reference.net.inner.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 5, 1, 28, 28)
    reference.net.eval()
    converted.net.eval()
    torch.testing.assert_close(converted(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_wraps_the_network_and_keeps_its_state_dict_keys() -> None:
    compiled = small_model("er", "--compile", "1")
    plain = small_model("er")
    assert compiled.net.inner._compiled_call_impl is not None and plain.net.inner._compiled_call_impl is None
    assert list(compiled.net.state_dict()) == list(plain.net.state_dict())


def test_every_task_aware_layer_gets_the_counts_once_per_forward() -> None:
    model = small_model("er_ace", "--nl", "AdaB2N")
    received: list[torch.Tensor | None] = []
    streams: list[int | None] = []
    for layer in task_aware_layers(model.net):
        original = layer.set_batch_tasks

        def spy(ids, counts=None, stream=None, f=original):
            received.append(counts)
            streams.append(stream)
            f(ids, counts, stream)

        layer.set_batch_tasks = spy
    model.forward_parts([(torch.randn(1, 4, 1, 28, 28), 0), (torch.randn(1, 2, 1, 28, 28), torch.tensor([[0, 0]]))])
    n_layers = len(task_aware_layers(model.net))
    assert len(received) == n_layers  # joint forward: one pass
    assert streams == [4] * n_layers  # its first 4 samples are the stream batch
    assert all(c is received[0] for c in received)  # one tensor shared by every layer
    assert received[0].tolist() == [[6.0, 0.0, 0.0, 0.0, 0.0]]  # one member's counts


def test_resnet_converted_to_adab2n_under_autocast_backpropagates() -> None:
    net = convert_norm(ResNet18(4, nf=4, in_channels=1), "AdaB2N", num_tasks=2)
    ids = torch.tensor([0, 0, 1, 1])
    for layer in task_aware_layers(net):
        layer.end_task()
        layer.set_batch_tasks(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(4, 1, 12, 12))
    loss = nn.functional.cross_entropy(out.float(), torch.tensor([0, 1, 2, 3]))
    loss = loss + sum(layer.norm_loss for layer in task_aware_layers(net))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert net.bn1.task_weight.grad is not None and net.bn1.task_weight.grad.abs().sum() > 0
