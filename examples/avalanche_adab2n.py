"""AdaB²N in an Avalanche strategy: Split Fashion-MNIST (5 experiences of 2 classes), reduced ResNet-18.

Avalanche's own ``ER_ACE``, ``DER`` or ``Naive`` train the network after two additions, ``convert_norm`` and
``TaskAwareNormPlugin`` (``integrations/avalanche.py``); the stream is this project's Fashion-MNIST as an
Avalanche class-incremental benchmark. After each experience the strategy is evaluated on the whole test stream and
Avalanche prints its usual metrics; the last line is one JSON object (final accuracy averaged over experiences).

    pip install "normcl[avalanche]"   # or, in a clone: pip install -e ".[avalanche]"
    python -m normcl.examples.avalanche_adab2n --strategy er_ace --samples_per_class 500

(in a clone also ``python examples/avalanche_adab2n.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from argparse import Namespace
from typing import Any

import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin

from normcl.backbone.resnet18 import ResNet18
from normcl.datasets import get_dataset_class
from normcl.integrations.avalanche import TaskAwareNormPlugin, avalanche_benchmark
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.norms import convert_norm
from normcl.utils.best_args import best_args_for
from normcl.utils.run_setup import resolve_device, set_seed

DATASET = "seq-fmnist"
MODELS = {"er_ace": "er_ace", "der": "der", "naive": "sgd"}
"""Each strategy's counterpart among this project's models, whose tuned Fashion-MNIST values are the defaults."""
ACCURACY = "Top1_Acc_Exp/eval_phase/test_stream/"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", choices=sorted(MODELS), default="er_ace")
    p.add_argument("--samples_per_class", type=int, default=None, help="training images per class (default: all)")
    p.add_argument("--test_samples_per_class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--buffer_size", type=int, default=500)
    p.add_argument("--bs", type=int, default=10, help="stream and replay batch size (online: 10)")
    p.add_argument("--epochs", type=int, default=1, help="passes over each experience (online: 1)")
    p.add_argument("--lr", type=float, default=None, help="default: this project's tuned value for the strategy")
    p.add_argument("--nf", type=int, default=20, help="ResNet-18 width: 20 = the reduced ResNet-18")
    p.add_argument("--kappa", type=float, default=0.4)
    p.add_argument("--lambd", type=float, default=0.1)
    p.add_argument("--ada_t0", type=int, default=0)
    help_text = "1: the regulariser only in iterations with a replay part; 0: in every iteration (default: as the "
    p.add_argument(
        "--only_when_replaying",
        type=int,
        choices=[0, 1],
        nargs="?",
        const=1,
        help=help_text + "strategy's reference model)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--data_path", default=None, help="as normcl-run's --data_path (default: data, then the system's)")
    return p.parse_args(argv)


def make_strategy(args: argparse.Namespace, net: torch.nn.Module, device: torch.device) -> Any:
    """Avalanche's strategy as it ships, with this project's tuned learning rate (and DER's alpha) by default."""
    tuned = best_args_for(DATASET, MODELS[args.strategy], args.buffer_size)
    args.lr = tuned["lr"] if args.lr is None else args.lr
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)
    schedule = None if args.only_when_replaying is None else bool(args.only_when_replaying)
    metrics = [accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True, stream=True)]
    evaluator = EvaluationPlugin(*metrics, loggers=[InteractiveLogger()])
    common = {
        "model": net,
        "optimizer": optimizer,
        "train_mb_size": args.bs,
        "train_epochs": args.epochs,
        "eval_mb_size": 256,
        "device": device,
        "plugins": [TaskAwareNormPlugin(only_when_replaying=schedule)],
        "evaluator": evaluator,
    }
    if args.strategy == "er_ace":
        return ER_ACE(mem_size=args.buffer_size, batch_size_mem=args.bs, **common)
    if args.strategy == "der":
        return DER(mem_size=args.buffer_size, batch_size_mem=args.bs, alpha=tuned["alpha"], beta=0.0, **common)
    return Naive(**common)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    set_seed(args.seed)
    device = resolve_device(args.device)
    started = time.perf_counter()
    dataset = get_dataset_class(DATASET)(Namespace(samples_per_class=args.samples_per_class, data_path=args.data_path))
    benchmark = avalanche_benchmark(dataset, args.test_samples_per_class)
    print(dataset.data_line())
    net = ResNet18(dataset.n_classes(), nf=args.nf, in_channels=dataset.SHAPE[0])
    net = convert_norm(net, "AdaB2N", num_tasks=dataset.N_TASKS, kappa=args.kappa, lambd=args.lambd, ada_t0=args.ada_t0)
    strategy = make_strategy(args, net, device)
    results: dict[str, Any] = {}
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        results = strategy.eval(benchmark.test_stream)
    final = [value for key, value in sorted(results.items()) if key.startswith(ACCURACY)]
    layers = [m for m in net.modules() if isinstance(m, AdaB2N)]
    completed = {int(m.tasks_completed) for m in layers}
    summary = {
        "strategy": args.strategy,
        "accuracy": round(100.0 * sum(final) / len(final), 2),
        "accuracy_per_experience": [round(100.0 * a, 2) for a in final],
        "adab2n_layers": len(layers),
        "tasks_completed": completed.pop() if len(completed) == 1 else sorted(completed),
        "settings": {k: v for k, v in vars(args).items() if k not in ("data_path", "device")},
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
