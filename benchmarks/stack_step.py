"""Milliseconds of one training step of K stacked networks, per member, against one network alone.

Both get what a replay step gives AdaB²N (a joint batch of ``--batch`` images, the first half from task 1, the
stream, the second half replayed from task 0, after one completed task; the regulariser joins the loss): the stack
``[K, batch]`` images, one member's worth each, as ``StackedNet`` takes them. Forward + backward, interleaved
(stack, alone, stack, alone, ...) in one process at one thread count, so that drift cancels; the medians are
reported. Where ``per_member_ratio`` (the stack's step / K over the lone network's) is below 1, stacking saves
arithmetic time at that thread count; whole runs add start-up and evaluation (``benchmarks/stack.py``).

Output: one JSON line with ``members``, ``nl``, ``nf``, ``batch``, ``channels_last``, ``alone_ms`` (one network),
``stack_ms`` (the stack) and ``per_member_ratio``, and the environment (``benchmarks/output.py``, ``ENVIRONMENT``).

    python benchmarks/stack_step.py --members 8 [--nl AdaB2N] [--nf 20] [--threads 1] [--channels_last 1]
        [--device cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.benchmarks.common import after_one_task, environment, interleaved, replay_step
from normcl.benchmarks.output import emit, parse
from normcl.models.utils.stacking import StackedNet

TASKS = 5
KEYS = ("members", "nl", "nf", "batch", "channels_last", "alone_ms", "stack_ms", "per_member_ratio")
SMOKE = "--members 2 --nf 8 --batch 4 --repeats 1"  # narrower: torch 2.14.1 crashes, see docs/benchmarks.md


def network(nl: str, nf: int) -> nn.Module:
    """A reduced ResNet-18 with ``nl``, after one completed task."""
    return after_one_task(ResNet18(num_classes=10, nf=nf, in_channels=1).train(), nl, TASKS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, required=True, help="K: networks in the stack")
    p.add_argument("--nl", default="AdaB2N", help="the norm of every network")
    p.add_argument("--nf", type=int, default=20, help="ResNet-18 width")
    p.add_argument("--batch", type=int, default=20, help="joint batch of each member: stream + replay images")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of both measurements")
    p.add_argument("--channels_last", type=int, default=1, choices=[0, 1], help="channels-last memory format")
    p.add_argument("--repeats", type=int, default=20, help="timed steps of each (after 3 warm-up steps)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    a = parse(p, SMOKE, argv)
    if a.members < 1:
        p.error(f"--members must be at least 1; got {a.members}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device, k, b = torch.device(a.device), a.members, a.batch
    alone = network(a.nl, a.nf).to(device)
    stack = StackedNet([network(a.nl, a.nf) for _ in range(k)], channels_last=bool(a.channels_last)).to(device)
    x, ids = torch.randn(k, b, 1, 28, 28, device=device), (torch.arange(b, device=device) < b // 2).long()
    y = torch.randint(0, 4, (k, b), device=device)
    x_alone = x[0]
    if a.channels_last:
        alone, stack = alone.to(memory_format=torch.channels_last), stack.to(memory_format=torch.channels_last)
        x_alone = x_alone.contiguous(memory_format=torch.channels_last)
    steps = {
        "alone": replay_step(alone, x_alone, y[0], ids, TASKS, b // 2),
        "stack": replay_step(stack, x, y, ids.expand(k, b), TASKS, b // 2),
    }
    medians = interleaved(steps, device, a.repeats, warmup=3)
    alone_ms, stack_ms = medians["alone"], medians["stack"]
    result = {
        "members": k,
        "nl": a.nl,
        "nf": a.nf,
        "batch": b,
        "channels_last": a.channels_last,
        "alone_ms": round(alone_ms, 2),
        "stack_ms": round(stack_ms, 2),
        "per_member_ratio": round(stack_ms / k / alone_ms, 3),
    }
    emit(result | environment(device))


if __name__ == "__main__":
    main()
