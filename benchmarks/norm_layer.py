"""Milliseconds of forward + backward of the backbone with AdaB²N against the same backbone with BatchNorm.

Both networks get the same joint batch (``--batch`` images, the first half from task 1, the stream, and the second
half replayed from task 0, after one completed task, as a replay step of the second task sees them) and their
AdaB²N regulariser joins the loss. The two measurements are interleaved (A, B, A, B, ...) so that the machine's
drift cancels; the median of each is reported.

Output: one JSON line with ``nl``, ``nf``, ``batch``, ``compile``, ``nl_ms`` (the ``--nl`` network's step),
``bn_ms`` and ``ratio`` (nl / BN), and the environment (``benchmarks/output.py``, ``ENVIRONMENT``).

    python benchmarks/norm_layer.py --nl AdaB2N --nf 20 [--device cuda] [--threads 2] [--repeats 60] [--compile 1]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import torch

from normcl.backbone.resnet18 import ResNet18
from normcl.benchmarks.common import after_one_task, environment, interleaved, replay_step
from normcl.benchmarks.output import emit, parse

TASKS = 5
KEYS = ("nl", "nf", "batch", "compile", "nl_ms", "bn_ms", "ratio")
SMOKE = "--nf 2 --batch 4 --repeats 1 --warmup 1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nl", default="AdaB2N", help="the norm measured against BN")
    p.add_argument("--nf", type=int, default=20, help="ResNet-18 width")
    p.add_argument("--batch", type=int, default=20, help="joint batch: stream + replay images")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=60, help="timed steps of each network (after --warmup steps)")
    p.add_argument("--compile", type=int, default=0, choices=[0, 1], help="torch.compile both networks first")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps of each network first")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(parser(), SMOKE, argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    base = ResNet18(num_classes=10, nf=a.nf, in_channels=1).to(device).train()
    other = after_one_task(copy.deepcopy(base), a.nl, TASKS)
    if a.compile:
        base.compile()
        other.compile()
    x = torch.randn(a.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 4, (a.batch,), device=device)
    ids, stream = (torch.arange(a.batch, device=device) < a.batch // 2).long(), a.batch // 2
    steps = {"bn": replay_step(base, x, y, ids, TASKS, stream), "other": replay_step(other, x, y, ids, TASKS, stream)}
    medians = interleaved(steps, device, a.repeats, a.warmup)
    bn_ms, other_ms = medians["bn"], medians["other"]
    result = {"nl": a.nl, "nf": a.nf, "batch": a.batch, "compile": a.compile}
    result |= {"nl_ms": round(other_ms, 3), "bn_ms": round(bn_ms, 3), "ratio": round(other_ms / bn_ms, 3)}
    emit(result | environment(device))


if __name__ == "__main__":
    main()
