"""Milliseconds per training step: the framework's loop against a bare loop of the same network.

``framework_ms`` is the median time of ``Trainer.train_step`` in task 1, once task 0 has filled the buffer:
batch gathering, on-device augmentation, buffer sampling and insertion, the model's losses, the norm layers' task
ids and regularisers. ``bare_ms`` is the median time of forward + backward + optimiser step of a copy of the network
on pre-made tensors of the same batch composition (ER-ACE: 10 stream + 10 replay; DER++: 10 + 10 + 10) and the
same forward structure (separate passes or one joint pass, as the run uses), with the same norm layers and the
optimiser the model declares (``make_optimizer``) at the run's ``--lr``. The two are timed in turn (A, B, A, B, ...)
so that the machine's drift cancels.

With ``--against NORM`` a third loop, timed in turn with the two: the framework's step of the same run with NORM in
place of ``--nl`` and ``--nl``'s forward mode (AdaB²N's joint pass against BN's joint pass), so that the norm is the
one thing that differs: ``against_ms`` and ``norm_ratio`` (framework / against).

Output: one JSON line with ``dataset``, ``model``, ``nl``, ``nf``, ``buffer_size``, ``forward_mode`` (``separate`` or
``joint``), ``extra`` (the framework flags added), ``framework_ms``, ``bare_ms``, ``ratio`` (framework / bare),
``against`` (the norm, or null), ``against_ms`` and ``norm_ratio`` (null without ``--against``), and the environment
(``benchmarks/output.py``, ``ENVIRONMENT``).

    python benchmarks/step_time.py --dataset seq-fmnist --model er_ace --nl AdaB2N --buffer_size 500 --nf 20 \
        --extra "--kappa 0.4 --lambd 0.1" --against BN
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normcl.benchmarks.common import build, environment, timed
from normcl.benchmarks.output import emit, parse
from normcl.datasets.utils.continual_dataset import TaskData
from normcl.models.utils.task_aware import task_aware_layers, task_counts
from normcl.utils.run_setup import apply_speed_options
from normcl.utils.stream import epoch_batches
from normcl.utils.training import Trainer
from normcl.utils.wandb_logger import WandbLogger

PARTS = {"sgd": 1, "joint": 1, "er": 2, "der": 2, "derpp": 3, "er_ace": 2}
KEYS = (
    "dataset",
    "model",
    "nl",
    "nf",
    "buffer_size",
    "forward_mode",
    "extra",
    "framework_ms",
    "bare_ms",
    "ratio",
    "against",
    "against_ms",
    "norm_ratio",
)
SMOKE = (
    "--nl AdaB2N --extra '--lambd 0.1 --kappa 0.4' --nf 2 --buffer_size 20 --samples_per_class 10 --steps 2 --warmup 1 "
    "--against BN"
)


def bare_step(model, args: argparse.Namespace, parts: list[tuple[Tensor, Tensor, Tensor]], lambd: float):
    """forward + backward + optimiser step of a copy of the run's network on fixed tensors, in the model's forward
    mode, with the optimiser the model declares for a run's parameters at the run's learning rate (``args``)."""
    for layer in task_aware_layers(model.net):
        layer.norm_loss = None  # a graph node: not copyable
    net = model.net.member(0)  # the network of the run (its one member), a copy of its own
    apply_speed_options(net, args)  # a copy drops the compiled call (Module.__getstate__): compile it too
    opt = model.make_optimizer(list(net.parameters()), args.lr)
    layers = task_aware_layers(net)
    n_tasks = model.dataset.N_TASKS

    def forward(x: Tensor, ids: Tensor, stream: int) -> Tensor:
        counts = task_counts(ids, n_tasks)
        for layer in layers:
            layer.set_batch_tasks(ids, counts, stream)
        if model.net.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with model.autocast():
            out = net(x).float()
        extra = [layer.norm_loss for layer in layers if layer.norm_loss is not None]
        return out, extra

    def step() -> None:
        extras = []
        if model.forward_mode == "joint" and len(parts) > 1:
            out, extra = forward(torch.cat([p[0] for p in parts]), torch.cat([p[2] for p in parts]), len(parts[0][0]))
            loss = F.cross_entropy(out, torch.cat([p[1] for p in parts]))
            extras += extra
        else:
            loss = 0.0
            for i, (x, y, ids) in enumerate(parts):  # the first part is the stream batch
                out, extra = forward(x, ids, len(x) if i == 0 else 0)
                loss = loss + F.cross_entropy(out, y)
                extras += extra
        if extras and lambd:
            loss = loss + lambd * torch.stack(extras).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="seq-fmnist")
    p.add_argument("--model", default="er_ace")
    p.add_argument("--nl", default="BN")
    p.add_argument("--buffer_size", type=int, default=500)
    p.add_argument("--nf", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=60, help="timed steps of each loop")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--synthetic", type=int, default=None, help="random images per class instead of the files")
    p.add_argument("--extra", default="", help="more framework flags, e.g. '--lambd 0.1 --kappa 0.4'")
    p.add_argument(
        "--samples_per_class",
        type=int,
        default=None,
        help="training images per class (default: the buffer size, at least 300)",
    )
    p.add_argument(
        "--against",
        default=None,
        metavar="NORM",
        help="also time the framework's step with NORM in place of --nl, in --nl's forward mode: norm_ratio",
    )
    return p


def in_task1(flags: list[str], synthetic: int | None) -> tuple[argparse.Namespace, Trainer, TaskData, list[Tensor]]:
    """The framework's trainer of the run ``flags`` after its first task (the buffer filled, the task ended), and the
    second task's batches."""
    args, dataset, model = build(flags, synthetic)
    trainer = Trainer(model, [dataset], [args], [WandbLogger(args)])
    task0 = dataset.task(0)
    for idx in epoch_batches(len(task0.train_y), args.batch_size, dataset.device):
        trainer.train_step([task0], idx[None])  # one member
    model.meta_end_task(dataset)
    task1 = dataset.task(1)
    return args, trainer, task1, epoch_batches(len(task1.train_y), args.batch_size, dataset.device)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(parser(), SMOKE, argv)
    spc = a.samples_per_class or max(a.buffer_size, 300)
    flags = ["--dataset", a.dataset, "--model", a.model, "--nl", a.nl, "--buffer_size", str(a.buffer_size)]
    flags += ["--nf", str(a.nf), "--lr", "0.03", "--bs", "10", "--epochs", "1", "--seed", "0", "--nowand", "1"]
    flags += ["--non_verbose", "1", "--samples_per_class", str(spc), *a.extra.split()]
    if a.device:
        flags += ["--device", a.device]
    if a.threads:
        flags += ["--num_threads", str(a.threads)]
    args, trainer, task1, batches = in_task1(flags, a.synthetic)
    model, dataset = trainer.model, trainer.datasets[0]
    device = dataset.device
    steps = {"framework": lambda i: trainer.train_step([task1], batches[i % len(batches)][None])}
    if a.against:
        mode = ["--forward_mode", model.forward_mode]
        _, other, other_task1, other_batches = in_task1([*flags, "--nl", a.against, *mode], a.synthetic)
        steps["against"] = lambda i: other.train_step([other_task1], other_batches[i % len(other_batches)][None])
    c, h, w = dataset.SHAPE
    lo, hi = dataset.task_classes(1)
    parts = []
    for k in range(PARTS[a.model]):
        x = torch.randn(args.batch_size, c, h, w, device=device)
        y = torch.randint(lo if k == 0 else 0, hi if k == 0 else lo, (args.batch_size,), device=device)
        parts.append((x, y, torch.full((args.batch_size,), 1 if k == 0 else 0, device=device)))
    weights = [w for layer in task_aware_layers(model.net) for w in layer.norm_loss_weight(model.current_task)]
    step = bare_step(model, args, parts, max(weights, default=0.0))
    steps["bare"] = lambda i: step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(a.steps + a.warmup):  # interleaved (A, B, A, B, ...): the machine's drift cancels
        for name, fn in steps.items():
            times[name].append(timed(lambda fn=fn, i=i: fn(i), device))
    ms = {name: statistics.median(t[a.warmup :]) for name, t in times.items()}
    against_ms = ms.get("against")
    result = {
        "dataset": a.dataset,
        "model": a.model,
        "nl": a.nl,
        "nf": a.nf,
        "buffer_size": a.buffer_size,
        "forward_mode": model.forward_mode,
        "extra": a.extra,
        "framework_ms": round(ms["framework"], 3),
        "bare_ms": round(ms["bare"], 3),
        "ratio": round(ms["framework"] / ms["bare"], 3),
        "against": a.against,
        "against_ms": None if against_ms is None else round(against_ms, 3),
        "norm_ratio": None if against_ms is None else round(ms["framework"] / against_ms, 3),
    }
    emit(result | environment(device))


if __name__ == "__main__":
    main()
