"""Milliseconds of forward + backward of the backbone with AdaB²N against the same backbone with BatchNorm.

Both networks get the same joint batch (``--batch`` images, the first half from task 1, the stream, and the second
half replayed from task 0, after one completed task, as a replay step of the second task sees them) and their
AdaB²N regulariser joins the loss. The two measurements are interleaved (A, B, A, B, ...) so that the machine's
drift cancels; the median of each is reported. The last output line is one JSON object.

    python benchmarks/norm_layer.py --nl AdaB2N --nf 20 [--device cuda] [--threads 2] [--repeats 60] [--compile 1]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from normcl.backbone.resnet18 import ResNet18
from normcl.benchmarks.common import after_one_task, interleaved, machine, replay_step

TASKS = 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nl", default="AdaB2N", help="the norm measured against BN")
    p.add_argument("--nf", type=int, default=20, help="ResNet-18 width")
    p.add_argument("--batch", type=int, default=20, help="joint batch: stream + replay images")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=60, help="timed steps of each network (after 10 warm-up steps)")
    p.add_argument("--compile", type=int, default=0, choices=[0, 1], help="torch.compile both networks first")
    a = p.parse_args()
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
    medians = interleaved(steps, device, a.repeats, warmup=10)
    bn_ms, other_ms = medians["bn"], medians["other"]
    name = "adab2n_ms" if a.nl == "AdaB2N" else f"{a.nl.lower()}_ms"
    result = {"nl": a.nl, "nf": a.nf, "batch": a.batch, "compile": a.compile}
    result |= {name: round(other_ms, 3), "bn_ms": round(bn_ms, 3)}
    result |= {"ratio": round(other_ms / bn_ms, 3), **machine(device)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
