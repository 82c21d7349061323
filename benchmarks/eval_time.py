"""Evaluation throughput: the framework's ``evaluate`` against a bare inference loop over the same test tensors.

``framework`` times ``normcl.utils.evaluation.evaluate_members`` on every task's test set (uint8 images normalised
on the device, class-IL and task-IL counts kept on the device, one host read per task); ``bare`` times
``net(x).argmax(1)`` in eval mode under ``torch.no_grad`` over the same images, normalised beforehand, in batches of
the same size. Both run on the network after training task 0, so the norm layers are in their evaluation state.

Output: one JSON line with ``dataset``, ``nl``, ``nf``, ``images`` (test images of all tasks), ``eval_batch_size``,
``extra`` (the framework flags added), ``framework_ips`` and ``bare_ips`` (images per second, medians) and ``ratio``
(framework / bare), and the environment (``benchmarks/output.py``, ``ENVIRONMENT``).

    python benchmarks/eval_time.py --dataset seq-fmnist --nl AdaB2N --nf 20
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from normcl.benchmarks.common import build, environment, timed
from normcl.benchmarks.output import emit, parse
from normcl.utils.stream import epoch_batches
from normcl.utils.training import Trainer, evaluate_members
from normcl.utils.wandb_logger import WandbLogger

KEYS = ("dataset", "nl", "nf", "images", "eval_batch_size", "extra", "framework_ips", "bare_ips", "ratio")
SMOKE = "--nf 2 --synthetic 10 --repeats 1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="seq-fmnist")
    p.add_argument("--nl", default="BN")
    p.add_argument("--nf", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the test sets (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--synthetic", type=int, default=None, help="random images per class instead of the files")
    p.add_argument("--extra", default="", help="more framework flags, e.g. '--eval_batch_size 512 --amp 1'")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(parser(), SMOKE, argv)
    flags = ["--dataset", a.dataset, "--model", "sgd", "--nl", a.nl, "--nf", str(a.nf), "--lr", "0.03"]
    flags += ["--bs", "10", "--epochs", "1", "--seed", "0", "--nowand", "1", "--non_verbose", "1"]
    flags += ["--samples_per_class", "200", *a.extra.split()]
    flags += ["--device", a.device] if a.device else []
    flags += ["--num_threads", str(a.threads)] if a.threads else []
    args, dataset, model = build(flags, a.synthetic)
    device = dataset.device
    trainer = Trainer(model, [dataset], [args], [WandbLogger(args)])
    task0 = dataset.task(0)
    for idx in epoch_batches(len(task0.train_y), args.batch_size, device):
        trainer.train_step([task0], idx[None])  # one member
    model.meta_end_task(dataset)

    tasks = list(range(dataset.N_TASKS))
    images = sum(len(dataset.task(t).test_y) for t in tasks)
    bs = args.eval_batch_size
    framework = [timed(lambda: evaluate_members(model, [dataset], tasks, bs), device) for _ in range(a.repeats + 1)]

    xs = [dataset.test_transform(dataset.task(t).test_x) for t in tasks]

    @torch.no_grad()
    def bare() -> None:
        model.net.eval()
        for x in xs:
            for start in range(0, len(x), bs):
                model(x[start : start + bs], net=model.net.inner).argmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    bare_ms = [timed(bare, device) for _ in range(a.repeats + 1)]
    framework_ips = images / statistics.median(framework[1:]) * 1000.0
    bare_ips = images / statistics.median(bare_ms[1:]) * 1000.0
    result = {
        "dataset": a.dataset,
        "nl": a.nl,
        "nf": a.nf,
        "images": images,
        "eval_batch_size": bs,
        "extra": a.extra,
        "framework_ips": round(framework_ips, 1),
        "bare_ips": round(bare_ips, 1),
        "ratio": round(framework_ips / bare_ips, 3),
    }
    emit(result | environment(device))


if __name__ == "__main__":
    main()
