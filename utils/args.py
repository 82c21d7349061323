"""A run's arguments from its command line (``utils/main.py``): parsed (``utils/parser.py``), every value the user
gives checked in its flag's wording, then resolved.

Values are resolved in this order: explicit flags, then ``--load_best_args`` (the reference hyper-parameters), then
the dataset's defaults; ``--bs`` and ``--epochs`` override everything (the paper's online setting is ``--bs 10
--epochs 1``). A component's flag that the run's component does not declare records its inactive value
(``utils/component_options.py``). Every value is validated here, once, in the flag's wording; library code raises
``ValueError`` in its own terms.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from normcl.datasets import DATASETS
from normcl.models import MODELS
from normcl.models.utils import NORMS
from normcl.utils.best_args import best_args_for
from normcl.utils.buffer_modes import ring_size_problem
from normcl.utils.component_options import fill_component_options
from normcl.utils.core.errors import UserError
from normcl.utils.core.options import check_values
from normcl.utils.parser import build_parser


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse (with :func:`~normcl.utils.parser.build_parser`'s parser, or ``parser``), check and resolve one run's
    command line; raises ``UserError``."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    check_values(parser, args)
    dataset_cls = DATASETS.get(args.dataset)
    model_cls = MODELS.get(args.model)
    NORMS.get(args.nl)
    if model_cls.USES_BUFFER and args.buffer_size is None:
        raise UserError(f"model '{args.model}' replays samples: pass --buffer_size N (e.g. --buffer_size 500)")
    n_tasks = dataset_cls.N_TASKS

    if args.load_best_args:
        buffer = args.buffer_size if model_cls.USES_BUFFER else None
        for key, value in best_args_for(args.dataset, args.model, buffer).items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    if args.bs is not None:
        args.batch_size = args.minibatch_size = args.bs
    if args.epochs is not None:
        args.n_epochs = args.epochs
    if args.batch_size is None:
        args.batch_size = dataset_cls.BATCH_SIZE
    if args.minibatch_size is None:
        args.minibatch_size = args.batch_size
    if args.n_epochs is None:
        args.n_epochs = dataset_cls.N_EPOCHS
    if args.lr is None:
        raise UserError("--lr is required: pass --lr 0.03, or --load_best_args for the reference value")
    fill_component_options(args)
    if args.resume and not args.run_name:
        raise UserError("--resume needs the --run_name of the run to continue")
    if args.resume and args.disable_log:
        raise UserError("--resume needs checkpoints, which --disable_log turns off; drop --disable_log")
    ring_problem = None
    if args.buffer_size is not None and args.buffer_mode == "ring":
        ring_problem = ring_size_problem(args.buffer_size, n_tasks)
    if ring_problem is not None:
        fix = f"use --buffer_size >= {n_tasks} or --buffer_mode reservoir"
        raise UserError(f"--buffer_size {args.buffer_size} {ring_problem}; {fix}")
    if dataset_cls.SETTING not in model_cls.COMPATIBILITY:
        raise UserError(
            f"model '{args.model}' does not support the {dataset_cls.SETTING} setting of '{args.dataset}'; "
            f"it supports: {', '.join(model_cls.COMPATIBILITY)}"
        )
    if args.backbone is None:
        args.backbone = dataset_cls.BACKBONE
    return args
