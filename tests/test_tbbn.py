"""TBBN (``models/utils/tbbn.py``) against an independent transcription of the reference code, in float64.

The transcription follows ``csm9493/TaskBalancedBN`` ``src/networks/tbbn.py`` (commit 9261ac0f) line by line, its
first-task branch (lines 79-111) and its later-task branch (lines 124-170), with ``r`` from its
``set_number_of_task`` (lines 48-62). ``stats="output"`` must equal it in everything; the default equals it in
outputs and gradients, and its running statistics are the first-task rule applied to the task's ``r`` splits.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from norm_helpers import randomised_bn
from test_models import small_model
from torch import Tensor, nn

from normcl.models.utils.layer_stacking import load, stacking_of
from normcl.models.utils.norms import NORMS, convert_norm
from normcl.models.utils.task_aware import TaskAwareNorm, task_aware_layers
from normcl.models.utils.tbbn import TaskBalancedBN, feasible_splits, tbbn

C, H, W, EPS, MOMENTUM = 3, 4, 4, 1e-5, 0.1
TOL = {"rtol": 1e-12, "atol": 1e-12}
CASES = {(10, 10, 1): [1, 1, 2, 2, 2], (48, 16, 3): [1, 2, 4, 8, 8]}
"""``(B_c, B_p, batch_ratio)`` -> the feasible ``r`` for ``T = 0 .. 4``."""


def reference_splits(b_c: int, b_p: int, batch_ratio: float, t: int) -> int | None:
    """``set_number_of_task(T)`` (lines 27-62): ``r = batch_ratio · T`` (1 at ``T = 0``), made a common divisor."""
    r = 1 if t == 0 else batch_ratio * t
    divisors = [i for i in range(1, math.gcd(b_c, b_p) + 1) if b_c % i == 0 and b_p % i == 0]
    return r if r in divisors else max([d for d in divisors if d < r], default=None)


def ema(batch: Tensor, running_mean: Tensor, running_var: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's running-statistics update from a ``[N, C, H, W]`` batch, as both of its branches write it: the
    EMA of the mean and of the unbiased variance (n = per-channel count)."""
    mean = batch.mean([0, 2, 3])
    n = batch.numel() / batch.size(1)
    unbiased = batch.var([0, 2, 3], unbiased=False) * n / (n - 1)
    with torch.no_grad():
        return MOMENTUM * mean + (1 - MOMENTUM) * running_mean, MOMENTUM * unbiased + (1 - MOMENTUM) * running_var


def first_task_rule(batch: Tensor, running_mean: Tensor, running_var: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Lines 84-111's running statistics of a reshaped ``[*, r·C, H, W]`` batch: each split's EMA with the unbiased
    variance (n = per-split count), then the mean over the splits."""
    mean_split, var_split = ema(batch, running_mean.repeat(r), running_var.repeat(r))
    return mean_split.view(r, -1).mean(dim=0), var_split.view(r, -1).mean(dim=0)


def reference_forward(
    x: Tensor, weight: Tensor, bias: Tensor, running: tuple[Tensor, Tensor], t: int, b_c: int, b_p: int, ratio: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's training forward (momentum 0.1): ``(output, running_mean, running_var)``."""
    r = reference_splits(b_c, b_p, ratio, t)
    running_mean, running_var = running
    n_, c, h, w = x.shape
    if t == 0:  # lines 79-111
        batch = x.view(-1, c * r, h, w)
        mean = batch.mean([0, 2, 3])
        var = batch.var([0, 2, 3], unbiased=False)
        out = (batch - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS)
        out = out * weight.repeat(r)[None, :, None, None] + bias.repeat(r)[None, :, None, None]
        return (out.view(n_, c, h, w), *first_task_rule(batch, running_mean, running_var, r))
    curr_dataset = (n_ // (ratio + 1)) * ratio  # lines 124-170
    curr_batch = x[:curr_dataset].view(-1, c * r, h, w)
    mem_batch_repeat = x[curr_dataset:].repeat(1, r, 1, 1)
    concat = torch.cat([curr_batch, mem_batch_repeat], dim=0)
    mean = concat.mean([0, 2, 3])
    var = concat.var([0, 2, 3], unbiased=False)
    concat = (concat - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS)
    concat = concat * weight.repeat(r)[None, :, None, None] + bias.repeat(r)[None, :, None, None]
    curr = concat[: curr_dataset // r].view(-1, c, h, w)
    mem = torch.mean(concat[curr_dataset // r :].view(-1, r, c, h, w), dim=1)
    out = torch.cat([curr, mem], dim=0)
    return out, *ema(out, running_mean, running_var)


def balanced_running(x: Tensor, running: tuple[Tensor, Tensor], b_c: int, r: int) -> tuple[Tensor, Tensor]:
    """The default's running statistics: the first-task rule on the task-balanced batch of ``r`` splits."""
    c, h, w = x.shape[1:]
    batch = torch.cat([x[:b_c].reshape(-1, r * c, h, w), x[b_c:].repeat(1, r, 1, 1)])
    return first_task_rule(batch, *running, r)


def layer_after(t: int, stats: str = "balanced", dtype: torch.dtype = torch.float64) -> TaskBalancedBN:
    torch.manual_seed(t)
    layer = tbbn(randomised_bn(C), stats=stats).to(dtype)
    for _ in range(t):
        layer.end_task()
    return layer


@pytest.mark.parametrize("stats", ["balanced", "output"])
@pytest.mark.parametrize(("b_c", "b_p", "ratio"), list(CASES))
@pytest.mark.parametrize("t", range(5))
def test_the_forward_is_the_reference_transcription(t: int, b_c: int, b_p: int, ratio: int, stats: str) -> None:
    r = CASES[b_c, b_p, ratio][t]
    assert feasible_splits(b_c, b_p, t) == reference_splits(b_c, b_p, ratio, t) == r
    layer = layer_after(t, stats)
    for step in range(2):  # the second step averages onto the first one's running statistics
        x = (torch.randn(b_c + b_p, C, H, W, dtype=torch.float64) * 2 + step).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
        running = (layer.running_mean.clone(), layer.running_var.clone())
        expected, ref_mean, ref_var = reference_forward(x_ref, weight, bias, running, t, b_c, b_p, ratio)
        layer.zero_grad()
        layer.set_batch_tasks(None, None, stream=b_c)
        out = layer(x)
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
        torch.testing.assert_close(out, expected, **TOL)
        for ours, theirs in ((x.grad, x_ref.grad), (layer.weight.grad, weight.grad), (layer.bias.grad, bias.grad)):
            torch.testing.assert_close(ours, theirs, **TOL)
        if stats == "balanced" and t > 0:
            ref_mean, ref_var = balanced_running(x.detach(), running, b_c, r)
        torch.testing.assert_close(layer.running_mean, ref_mean, **TOL)
        torch.testing.assert_close(layer.running_var, ref_var, **TOL)
        assert int(layer.num_batches_tracked) == 4 + step


def test_splits_follow_the_batch_and_take_one_where_the_reference_has_none() -> None:
    assert feasible_splits(10, 20, 1) == 1  # DER++: target 0.5; the reference's max(..., default=None) is None
    assert reference_splits(10, 20, 0.5, 1) is None  # its batch_ratio B_c / B_p = 0.5: r = 0.5
    assert [feasible_splits(10, 20, t) for t in range(5)] == [1, 1, 1, 1, 2]
    assert feasible_splits(10, 0, 3) == feasible_splits(0, 10, 3) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("t", "stream", "replayed"), [(0, 10, 10), (0, 10, 0), (3, 10, 0), (1, 10, 10)])
def test_one_split_is_batch_norm_bit_for_bit(dtype: torch.dtype, t: int, stream: int, replayed: int) -> None:
    """The first task (with or without replay), a batch without replay, and 10 : 10 at ``T = 1`` (r = 1)."""
    torch.manual_seed(0)
    bn = randomised_bn(C).to(dtype)
    layer = tbbn(bn).to(dtype)
    for _ in range(t):
        layer.end_task()
    for _ in range(2):
        x = torch.randn(stream + replayed, C, H, W, dtype=dtype).requires_grad_()
        x_bn = x.detach().clone().requires_grad_()
        layer.set_batch_tasks(None, None, stream=stream)
        out, expected = layer(x), bn(x_bn)
        grad = torch.randn_like(out)
        layer.zero_grad()
        bn.zero_grad()
        out.backward(grad)
        expected.backward(grad)
        assert torch.equal(out, expected) and torch.equal(x.grad, x_bn.grad)
        assert torch.equal(layer.weight.grad, bn.weight.grad) and torch.equal(layer.bias.grad, bn.bias.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(layer, name), getattr(bn, name)), name


def test_a_channels_last_input_gives_the_same_numbers() -> None:
    x = torch.randn(20, C, H, W, dtype=torch.float64)
    layers = [layer_after(2), layer_after(2)]
    outputs = []
    for layer, memory_format in zip(layers, (torch.contiguous_format, torch.channels_last), strict=True):
        layer.set_batch_tasks(None, None, stream=10)
        outputs.append(layer(x.contiguous(memory_format=memory_format)))
    torch.testing.assert_close(outputs[1], outputs[0], **TOL)
    torch.testing.assert_close(layers[1].running_var, layers[0].running_var, **TOL)


def test_evaluation_is_batch_norm_with_the_running_statistics() -> None:
    layer = layer_after(2).eval()
    x = torch.randn(7, C, H, W, dtype=torch.float64)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, EPS)
    assert torch.equal(layer(x), expected)
    assert int(layer.num_batches_tracked) == 3


def test_a_later_task_without_the_stream_size_is_refused_in_one_line() -> None:
    layer = layer_after(0)
    layer(torch.randn(6, C, H, W, dtype=torch.float64))  # the first task: the whole batch is the stream
    layer.end_task()
    with pytest.raises(ValueError, match=r"^TBBN: a training forward after the first task needs the stream") as e:
        layer(torch.randn(6, C, H, W, dtype=torch.float64))
    assert "\n" not in str(e.value)
    layer.set_batch_tasks(None, None, stream=7)
    with pytest.raises(ValueError, match=r"^TBBN: stream=7 samples in a batch of 6$"):
        layer(torch.randn(6, C, H, W, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^TBBN: stats must be one of balanced, output, got 'input'$"):
        TaskBalancedBN(C, stats="input")


def test_the_task_count_travels_with_the_state_dict_and_the_stack() -> None:
    layer = layer_after(3)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = tbbn(nn.BatchNorm2d(C)).double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.tasks_completed == 3
    stacking = stacking_of(TaskBalancedBN)
    members = [layer_after(2) for _ in range(3)]
    stacked = stacking.stack(members)
    assert stacked.num_features == 3 * C and stacked.tasks_completed == 2
    stacked.end_task()
    assert stacking.member(stacked, 1, tbbn(nn.BatchNorm2d(C)).double()).tasks_completed == 3
    with pytest.raises(ValueError, match="cannot stack TaskBalancedBN layers whose tasks_completed differ"):
        stacking.stack([layer_after(2), layer_after(1)])
    with pytest.raises(ValueError, match="cannot stack TaskBalancedBN layers whose extra state differ"):
        load(stacking.stack([layer_after(2), layer_after(2)]), [layer_after(2), layer_after(1)])


@pytest.mark.parametrize("stats", ["balanced", "output"])
def test_a_stack_of_three_is_each_member_alone_bit_for_bit(stats: str) -> None:
    members = [layer_after(2, stats) for _ in range(3)]
    for k, member in enumerate(members):
        with torch.no_grad():
            member.weight.mul_(1 + k)
            member.running_mean.add_(k)
    stacked = stacking_of(TaskBalancedBN).stack([copy.deepcopy(m) for m in members])
    torch.manual_seed(1)
    x = torch.randn(3, 20, C, H, W, dtype=torch.float64)  # each member's 10 stream + 10 replayed samples
    stacked.set_batch_tasks(None, None, stream=10)
    out = stacked(x.transpose(0, 1).reshape(20, 3 * C, H, W)).view(20, 3, C, H, W).transpose(0, 1)
    for k, member in enumerate(members):
        member.set_batch_tasks(None, None, stream=10)
        assert torch.equal(out[k], member(x[k])), f"member {k}"
        assert torch.equal(stacked.running_mean.view(3, C)[k], member.running_mean)
        assert torch.equal(stacked.running_var.view(3, C)[k], member.running_var)


def test_the_layer_is_a_task_aware_norm_without_a_regulariser() -> None:
    layer = layer_after(0)
    assert isinstance(layer, TaskAwareNorm) and layer.prefers_joint_forward
    layer.set_batch_tasks(torch.zeros(6, dtype=torch.long), None, stream=6)
    layer(torch.randn(6, C, H, W, dtype=torch.float64))
    assert layer.norm_loss is None and layer.norm_loss_weight(3) == ()
    flags = {o.flag: (o.keyword, o.default, o.type) for o in NORMS.get("TBBN").options}
    assert flags == {"--tbbn_stats": ("stats", "balanced", str)}
    net = convert_norm(nn.Sequential(nn.Conv2d(1, C, 3), randomised_bn(C)), "TBBN", stats="output")
    assert isinstance(net[1], TaskBalancedBN) and net[1].stats == "output"
    net[1].end_task()
    again = convert_norm(net, "TBBN")[1]  # from a TBBN: its tensors, not its task count
    assert again.stats == "balanced" and again.tasks_completed == 0


@pytest.mark.parametrize(("mode", "streams"), [("joint", [4]), ("separate", [4, 0])])
def test_the_model_hands_the_layers_its_stream_batch(mode: str, streams: list[int]) -> None:
    """A model's first part is its stream batch: joint, the first part's size; separate, all of the first forward
    and none of the others."""
    model = small_model("er_ace", "--nl", "TBBN", "--forward_mode", mode, "--dtype", "float64")
    layers = task_aware_layers(model.net)
    received: list[int | None] = []
    original = layers[0].set_batch_tasks

    def spy(task_ids: Tensor | None, counts: Tensor | None = None, stream: int | None = None) -> None:
        received.append(stream)
        original(task_ids, counts, stream)

    layers[0].set_batch_tasks = spy  # type: ignore[method-assign]
    for layer in layers:  # two tasks completed: the joint batch's 4 stream samples in 2 splits
        layer.end_task()
        layer.end_task()
    parts = [(torch.randn(1, 4, 1, 28, 28), 2), (torch.randn(1, 2, 1, 28, 28), torch.tensor([[0, 1]]))]
    outputs = model.forward_parts(parts)
    assert received == streams and [tuple(o.shape) for o in outputs] == [(1, 4, 10), (1, 2, 10)]
