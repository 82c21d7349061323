"""A stacked network is its members side by side: every norm, in float64, forward, backward and state (issue 14).

K reduced ResNet-18s with different seeds (and, for AdaB²N, different kappa, lambd and ada_t0) are stacked; one
training step of the stack on the members' own inputs and task ids must give each member's outputs, gradients,
running statistics and regulariser, and ``member(k)`` must give member k back. The batch is ``STREAM`` stream
samples, then replayed ones (TBBN splits them in two after the completed task).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from norm_helpers import doubled_bn
from tiers import one_norm_per_stacking, slow_but
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.stacking import StackedNet, UnstackableLayer
from normcl.models.utils.task_aware import task_aware_layers, task_counts

K, B, TASKS, STREAM = 3, 6, 5, 4
NORMS = {
    "BN": [{}] * K,
    "GN": [{}] * K,
    "LN": [{}] * K,
    "IN": [{}] * K,
    "CN": [{"affine": False}] * K,
    "BRN": [{"rmax": 2.0, "dmax": 1.0}] * K,
    "TBBN": [{}] * K,
    "TBBN-output": [{"stats": "output"}] * K,
    "AdaB2N": [
        {"num_tasks": TASKS, "kappa": kappa, "lambd": lambd, "ada_t0": t0}
        for kappa, lambd, t0 in ((0.4, 0.1, 0), (1.0, 1.0, 1), (0.0, 0.01, 0))
    ],
    "AdaB2N-renorm": [{"num_tasks": TASKS, "kappa": kappa, "renorm": True} for kappa in (0.1, 0.7, 1.0)],
}


def members(norm: str) -> list[nn.Module]:
    nets = []
    for k, options in enumerate(NORMS[norm]):
        torch.manual_seed(10 + k)
        net = ResNet18(num_classes=10, nf=4, in_channels=1)
        net = convert_norm(net, norm.split("-")[0], example_input=torch.zeros(1, 1, 12, 12), **options)
        nets.append(net.double().train())
    return nets


def hand_tasks(nets: list[nn.Module], stacked: nn.Module, ids: torch.Tensor) -> None:
    """One completed task everywhere, then each member's task ids (and the stack's, all members at once)."""
    for net, k in zip(nets, range(K), strict=True):
        for layer in task_aware_layers(net):
            layer.end_task()
            layer.set_batch_tasks(ids[k], task_counts(ids[k], TASKS), STREAM)
    counts = torch.stack([task_counts(row, TASKS) for row in ids])
    for layer in task_aware_layers(stacked):
        layer.end_task()
        layer.set_batch_tasks(ids, counts, STREAM)


@pytest.mark.parametrize("norm", list(NORMS))
def test_a_training_step_of_the_stack_is_each_members(norm: str) -> None:
    nets = members(norm)
    stacked = StackedNet([copy.deepcopy(net) for net in nets])
    torch.manual_seed(0)
    x = torch.randn(K, B, 1, 12, 12, dtype=torch.float64)
    ids = torch.tensor([[0, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1]])
    hand_tasks(nets, stacked, ids)

    out = stacked(x)
    alone = torch.stack([net(x[k]) for k, net in enumerate(nets)])
    torch.testing.assert_close(out, alone, rtol=1e-10, atol=1e-12)
    stacked_layers, member_layers = task_aware_layers(stacked), [task_aware_layers(net) for net in nets]
    regularised = [i for i, layer in enumerate(stacked_layers) if layer.norm_loss is not None]
    stacked_layers = [stacked_layers[i] for i in regularised]
    member_layers = [[m[i] for i in regularised] for m in member_layers]
    for i, layer in enumerate(stacked_layers):  # AdaB²N: each member's regulariser and its weight
        alone_losses = torch.cat([m[i].norm_loss for m in member_layers])
        torch.testing.assert_close(layer.norm_loss, alone_losses, rtol=1e-10, atol=1e-14)
        for task in (0, 1):
            assert layer.norm_loss_weight(task) == tuple(w for m in member_layers for w in m[i].norm_loss_weight(task))
    (out.square().sum() + sum(layer.norm_loss.sum() for layer in stacked_layers)).backward()
    for k in range(K):
        loss = alone[k].square().sum() + sum(layer.norm_loss.sum() for layer in member_layers[k])
        loss.backward(retain_graph=True)

    stacked.eval()
    x_eval = torch.randn(K, B, 1, 12, 12, dtype=torch.float64)
    for k, net in enumerate(nets):
        member = stacked.member(k)
        assert repr(member) == repr(net), f"member {k} comes back with its own options (kappa, lambd, ...)"
        for (name, a), b in zip(net.state_dict().items(), member.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=f"member {k}: {name}")
        grads = {name: p.grad for name, p in net.named_parameters()}
        stacked_grads = dict(zip(dict(net.named_parameters()), _member_grads(stacked, k, net), strict=True))
        for name, grad in grads.items():
            torch.testing.assert_close(stacked_grads[name], grad, rtol=1e-9, atol=1e-12, msg=f"member {k}: {name}")
        net.eval()
        torch.testing.assert_close(stacked(x_eval)[k], net(x_eval[k]), rtol=1e-10, atol=1e-12)


def _member_grads(stacked: StackedNet, k: int, net: torch.nn.Module) -> list[torch.Tensor]:
    """Member ``k``'s block of every stacked parameter's gradient (the k-th of K along the first dimension), in the
    shapes of its own network ``net``'s parameters."""
    members = zip(stacked.parameters(), net.parameters(), strict=True)
    return [p.grad.chunk(stacked.members)[k].reshape(q.shape) for p, q in members]


@pytest.mark.parametrize("norm", slow_but(list(NORMS), one_norm_per_stacking()))
def test_a_kept_member_is_refreshed_to_the_state_a_new_member_has(norm: str) -> None:
    """``member(k, kept=True)`` (what scoring reads) is built once; after the stack ran a training forward, ended a
    task and moved its parameters it is the same network with exactly the state, options and extra state that a member
    built anew has; a pickled stack, and one whose layers moved to another dtype, build it again."""
    nets = members(norm)
    stacked = StackedNet([copy.deepcopy(net) for net in nets])
    kept = [stacked.member(k, kept=True) for k in range(K)]
    torch.manual_seed(0)
    hand_tasks(nets, stacked, torch.tensor([[0, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1]]))
    with torch.no_grad():
        stacked(torch.randn(K, B, 1, 12, 12, dtype=torch.float64))  # training statistics move
        for p in stacked.parameters():
            p.add_(torch.randn_like(p))
    for k in range(K):
        again, new = stacked.member(k, kept=True), stacked.member(k)
        assert again is kept[k]
        assert repr(again) == repr(new)
        for (name, a), b in zip(new.state_dict().items(), again.state_dict().values(), strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f"member {k}: {name}"
        assert not torch.equal(kept[k].conv1.weight, nets[k].conv1.weight), "the state moved"
    copied = pickle.loads(pickle.dumps(stacked))  # without the kept members (closures inside): built anew
    assert copied.member(0, kept=True) is not kept[0]
    stacked.inner.float()  # the layers moved, not through the stack
    floats = stacked.member(0, kept=True)
    assert floats is not kept[0] and floats.conv1.weight.dtype == torch.float32


def test_a_member_comes_back_on_the_stacks_dtype_and_memory_format() -> None:
    """Members built in float32 and stacked, the stack then made float64 and channels-last (as ``--dtype`` and
    ``--channels_last`` do after stacking): ``member(k)`` is that too, and scores as the stack's member k."""
    torch.manual_seed(0)
    nets = [ResNet18(num_classes=10, nf=4, in_channels=1) for _ in range(2)]
    stacked = StackedNet(nets, channels_last=True).double().to(memory_format=torch.channels_last).eval()
    member = stacked.member(1).eval()
    assert {p.dtype for p in member.parameters()} == {torch.float64}
    assert member.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(member(x[1].contiguous(memory_format=torch.channels_last)), stacked(x)[1])


def test_member_parameters_are_each_members_blocks_sharing_the_stacks_storage() -> None:
    """Member k's parameters (its optimiser's) are the k-th block of each stacked parameter, in its own network's
    shapes, writing through to the stack, for one member as for three."""
    nets = members("BN")
    stacked = StackedNet([copy.deepcopy(net) for net in nets])
    for k, net in enumerate(nets):
        blocks = stacked.member_parameters(k)
        assert [tuple(b.shape) for b in blocks] == [tuple(p.shape) for p in net.parameters()]
        for block, p in zip(blocks, net.parameters(), strict=True):
            assert torch.equal(block, p)
    conv = stacked.member_parameters(1)[0]
    with torch.no_grad():
        conv.add_(1.0)
    torch.testing.assert_close(stacked.member(1).conv1.weight, nets[1].conv1.weight + 1.0)
    torch.testing.assert_close(stacked.member(0).conv1.weight, nets[0].conv1.weight)
    alone = StackedNet([copy.deepcopy(nets[0])])
    blocks = alone.member_parameters(0)
    assert [b.shape for b in blocks] == [p.shape for p in nets[0].parameters()]
    assert all(b.data_ptr() == p.data_ptr() for b, p in zip(blocks, alone.parameters(), strict=True))
    assert repr(alone.member(0)) == repr(nets[0])


def test_layers_that_differ_in_shape_or_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot stack Conv2d layers whose out_channels differ"):
        StackedNet([ResNet18(10, nf=4, in_channels=1), ResNet18(10, nf=8, in_channels=1)])
    gn = convert_norm(ResNet18(10, nf=4, in_channels=1), "GN")
    with pytest.raises(ValueError, match="different types at bn1: BatchNorm2d, GroupNorm"):
        StackedNet([ResNet18(10, nf=4, in_channels=1), gn])


def test_a_layer_that_declares_no_stacking_is_refused_by_name_not_stacked_as_its_base() -> None:
    nets = [convert_norm(ResNet18(10, nf=4, in_channels=1), doubled_bn) for _ in range(2)]
    with pytest.raises(UnstackableLayer, match=r"^DoubledBN \(bn1\) declares no stacking: decorate its class"):
        StackedNet(nets)


def test_a_stack_of_one_holds_its_members_dimension_and_saves_the_shapes_of_its_network() -> None:
    """A run alone is a stack of one, built as any stack: in memory its classifier is ``[1, classes, F]`` and
    AdaB²N's task logits ``[1, T]``; its state dict, what checkpoints hold, has its network's shapes (as before
    stacks), and loads back into a stack of one exactly."""
    net = members("AdaB2N")[0]
    stacked = StackedNet([copy.deepcopy(net)])
    assert stacked.inner.classifier.weight.shape == (1, *net.classifier.weight.shape)
    assert stacked.inner.bn1.task_weight.shape == (1, TASKS) and stacked.inner.bn1.eta.shape == (1,)
    state = stacked.inner.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert (state["bn1.task_weight"].shape, state["bn1.eta"].shape) == ((TASKS,), ())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    again = StackedNet([net])
    again.inner.load_state_dict(state)
    for (name, a), b in zip(state.items(), again.inner.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
