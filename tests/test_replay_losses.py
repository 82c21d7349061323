"""The replay methods' losses against independent formulas (issue 23): one float64 training step of ER, DER, DER++
and ER-ACE, with BN and with AdaB²N (its regulariser and its schedule), alone and as a member of a stack.

Each model first learns two stream batches of task 1 (which fill its buffer) and moves to task 2; then, on a copy of
its network taken before the compared step, the loss is written out from the methods' papers and the reference code
(mammoth's ``er``, ``der``, ``derpp``, ``er_ace``; the AdaB²N reference's ``*_ada`` variants for the regulariser)
with the same stream batch and the same buffer draws, and its value and gradients must equal the model's.
"""

from __future__ import annotations

import copy
from argparse import Namespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiers import slow_but
from torch import Tensor, nn

from normcl.datasets import get_dataset_class
from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.models.utils.task_aware import task_aware_layers, task_counts
from normcl.utils.args import parse_args
from normcl.utils.member_args import parse_members
from normcl.utils.run_setup import build_model, member_datasets

SHARED = [
    "--dataset", "seq-fmnist", "--buffer_size", "30", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "4",
    "--samples_per_class", "20", "--validation", "1", "--dtype", "float64", "--device", "cpu", "--nowand", "1",
]  # fmt: skip
MEMBERS = {
    "BN": ["--seed 0", "--seed 1 --lr 0.05"],
    "AdaB2N": ["--seed 0 --kappa 0.4 --lambd 0.5 --ada_t0 0", "--seed 1 --lr 0.05 --kappa 1.0 --lambd 2 --ada_t0 2"],
}
"""Two members per norm; each is also run alone. Member 1 of AdaB²N starts its regulariser at task 3 (``ada_t0 2``):
not in the compared step."""
MODEL_OPTIONS = {"alpha": ("0.3", "0.05"), "beta": ("0.7", "0.2")}
"""Each member's value of the model's options (DER's and DER++'s), where the model has them."""
ANY_KERNELS = {("derpp", "AdaB2N"), ("er_ace", "BN")}
"""Cases ``.ci/run`` runs again under its second kernel set: the formulas hold on any CPU."""
CASES = [
    pytest.param(model, norm, marks=[pytest.mark.kernels] if (model, norm) in ANY_KERNELS else [])
    for model in ("er", "der", "derpp", "er_ace")
    for norm in MEMBERS
]
FAST = {("derpp", "AdaB2N")}
"""The fast tier's step (``tests/tiers.py``): DER++'s two replay terms, its stored logits and AdaB²N's regulariser."""


def flags(model: str, norm: str) -> list[str]:
    return ["--model", model, "--nl", norm, *SHARED]


def member_flags(model: str, norm: str) -> list[str]:
    own = [o.dest for o in MODELS.get(model).OPTIONS if o.dest in MODEL_OPTIONS]
    return [" ".join([m, *(f"--{o} {MODEL_OPTIONS[o][k]}" for o in own)]) for k, m in enumerate(MEMBERS[norm])]


def stream(args: Namespace, task: int, batch: int) -> tuple[Tensor, Tensor]:
    dataset = get_dataset_class(args.dataset)(args)
    dataset.prepare()
    data = dataset.task(task)
    return data.train_x[10 * batch : 10 * (batch + 1)], data.train_y[10 * batch : 10 * (batch + 1)]


def formula(model: str, args: Namespace, net: nn.Module, step: dict[str, Any], mode: str) -> tuple[Tensor, Tensor]:
    """The method's loss on ``net`` (train mode) for the recorded step, plus AdaB²N's regulariser as the reference
    adds it: ``lambd · Σ`` over layers and forwards of ``norm_loss``, in steps that replay, from task ``ada_t0`` on;
    and the stream batch's logits of that forward (what DER and DER++ store)."""
    parts = [(step["inputs"], torch.full_like(step["labels"], step["task"]))]
    parts += [(draw[0], draw[-1]) for draw in step["draws"]]
    layers, norm_losses = task_aware_layers(net), []

    def forward(x: Tensor, tasks: Tensor) -> Tensor:
        for layer in layers:
            layer.set_batch_tasks(tasks, task_counts(tasks, 5))
        out = net(x)
        norm_losses.extend(layer.norm_loss for layer in layers)
        return out

    if mode == "joint":
        outs = forward(torch.cat([x for x, _ in parts]), torch.cat([t for _, t in parts])).split([10] * len(parts))
    else:
        outs = [forward(x, t) for x, t in parts]
    y = step["labels"]
    if model == "er":
        loss = F.cross_entropy(torch.cat(outs), torch.cat([y, *(draw[1] for draw in step["draws"])]))
    elif model == "er_ace":  # mammoth's er_ace.py: present classes, and every class from the highest seen on
        seen = max(step["seen"])
        mask = torch.zeros(10, dtype=torch.bool)
        mask[y.unique()] = True
        if seen < 9:
            mask[seen:] = True
        loss = F.cross_entropy(outs[0].masked_fill(~mask, torch.finfo(torch.float64).min), y)
        loss = loss + F.cross_entropy(outs[1], step["draws"][0][1])
    else:  # der.py / derpp.py
        loss = F.cross_entropy(outs[0], y) + args.alpha * F.mse_loss(outs[1], step["draws"][0][2])
        if model == "derpp":
            loss = loss + args.beta * F.cross_entropy(outs[2], step["draws"][1][1])
    if layers and step["task"] >= args.ada_t0:
        loss = loss + args.lambd * torch.stack(norm_losses).sum()
    return loss, outs[0]


def record_step(model: ContinualModel, inputs: Tensor, labels: Tensor, not_aug: Tensor) -> dict[str, Any]:
    """The model's observe on one batch, with its buffer draws, the network before it, its loss and gradients."""
    draws: list[tuple[Tensor, ...]] = []
    get_data = model.buffer.get_data

    def drawing(*args: Any) -> tuple[Tensor, ...]:
        draws.append(get_data(*args))
        return draws[-1]

    before = copy.deepcopy(model.net)
    model.buffer.get_data = drawing  # type: ignore[method-assign]
    loss = model.observe(inputs, labels, not_aug)
    del model.buffer.get_data
    grads = [p.grad.clone() for p in model.net.parameters()]
    return {"net": before, "draws": draws, "loss": loss, "grads": grads}


def check(model: str, args: Namespace, step: dict[str, Any], net: nn.Module, grads: list[Tensor], loss: Tensor) -> None:
    """The step's loss and gradients against the formula's; for DER and DER++ also what the step stored: the buffer
    rows the stream batch filled hold that batch's logits of the same forward, before the update (mammoth's
    ``der.py`` / ``derpp.py`` store ``outputs.data`` of the training forward)."""
    expected, logits = formula(model, args, net.train(), step, step["mode"])
    wanted = torch.autograd.grad(expected, list(net.parameters()))
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
    for got, want in zip(grads, wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if model in ("der", "derpp"):
        assert step["stored"] is not None, "DER stores logits"
        torch.testing.assert_close(step["stored"], logits.detach(), rtol=1e-12, atol=0)


def warm_up(model: ContinualModel, batches: list[tuple[Tensor, Tensor]]) -> None:
    """Two stream batches of task 1 (the buffer fills), then task 2 begins."""
    for not_aug, labels in batches:
        model.observe(model.transform(not_aug), labels, not_aug)
    model.meta_end_task(model.dataset)


def check_members(model: str, members: list[Namespace]) -> None:
    """One step of the runs ``members`` as one stack (a run alone: one member) against each member's formula."""
    datasets = member_datasets(members, torch.device("cpu"))
    stacked = build_model(members, datasets)
    firsts = [[stream(args, 0, b) for args in members] for b in range(2)]
    warm_up(stacked, [(torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])) for batch in firsts])
    batch = [stream(args, 1, 0) for args in members]
    not_aug, labels = torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])
    inputs = stacked.transform(not_aug)
    step = record_step(stacked, inputs, labels, not_aug)
    grad_net = copy.deepcopy(stacked.net)
    for p, g in zip(grad_net.parameters(), step["grads"], strict=True):
        p.data = g
    for k, args in enumerate(members):
        seen = {*firsts[0][k][1].tolist(), *firsts[1][k][1].tolist(), *labels[k].tolist()}
        draws = [tuple(column[k] for column in draw) for draw in step["draws"]]
        own = {"inputs": inputs[k], "labels": labels[k], "task": 1, "seen": seen, "draws": draws}
        # The buffer (30 rows) held the 20 warm-up samples: the step's 10 went to rows 20-29, in order.
        logits = stacked.buffer.buffers[k].logits
        own["stored"] = None if logits is None else logits[20:30]
        own["mode"] = stacked.forward_mode
        grads = [p.detach() for p in grad_net.member(k).parameters()]
        check(model, args, own, step["net"].member(k), grads, step["loss"][k])


@pytest.mark.parametrize(("model", "norm"), slow_but(CASES, FAST))
def test_one_step_alone_is_the_papers_formula(model: str, norm: str) -> None:
    for member in member_flags(model, norm):
        check_members(model, [parse_args([*flags(model, norm), *member.split()])])


@pytest.mark.parametrize(("model", "norm"), slow_but(CASES, ()))
def test_one_step_of_a_stack_is_each_members_formula(model: str, norm: str) -> None:
    check_members(model, parse_members(flags(model, norm), member_flags(model, norm)))
