"""Run one continual-learning experiment: ``python utils/main.py --dataset seq-fmnist --model er_ace ...``.

Also runnable as ``python -m utils.main``. Bad input ends with a one-line
message and exit code 2, before anything is written. A checkpoint is kept
after every task (and every ``--checkpoint_every`` steps) until the results
file is written; ``--resume 1 --run_name NAME`` continues from it.
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import normcl_bootstrap  # noqa: F401  (first: this repository's packages win over installed ones)
from datasets import get_dataset_class
from utils.args import parse_args, parse_members, split_members
from utils.checkpoint import load_checkpoint
from utils.core.errors import UserError
from utils.core.run_files import checkpoint_file, partial_results_file, results_file
from utils.results import (
    build_results,
    code_version,
    summary_table,
    write_results,
)
from utils.run_setup import (
    build_model,
    check_disk_space,
    check_writable,
    default_run_name,
    resolve_device,
    set_seed,
)
from utils.stack_training import run_stack
from utils.training import Interrupted, NonFiniteLoss, Trainer, check_trainable
from utils.wandb_logger import WandbLogger


def run(args: Namespace) -> dict[str, Any]:
    """Train and evaluate as ``args`` says; returns the results document (also written to disk)."""
    start = time.perf_counter()
    code = code_version()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    args.device = str(device)
    dataset_cls = get_dataset_class(args.dataset)
    args.setting = dataset_cls.SETTING
    args.run_name = args.run_name or default_run_name(args)
    out = results_file(args)
    ckpt = None if args.disable_log else checkpoint_file(out)
    dataset = dataset_cls(args, device)
    dataset.prepare()
    check_trainable(dataset)
    if not args.disable_log:
        check_writable(Path(args.results_path))
    payload = load_checkpoint(ckpt, args, device) if args.resume and ckpt is not None else None
    set_seed(args.seed)
    model = build_model(args, dataset)
    if not args.disable_log:
        check_disk_space(Path(args.results_path), model, dataset)
    trainer = Trainer(model, dataset, args, WandbLogger(args), ckpt)
    if payload is not None:
        trainer.load_state(payload)
        print(f"Resuming {args.run_name} at task {model.current_task + 1}, step {trainer.pos.step}", flush=True)
    try:
        history = trainer.run()
    except NonFiniteLoss as e:
        partial = build_results(args, trainer.history, model.forward_mode, time.perf_counter() - start, code)
        partial["stopped"] = e.record()
        if not args.disable_log:
            write_results(partial_results_file(out), partial)
            print(f"results of the completed tasks: {partial_results_file(out)}", file=sys.stderr)
        trainer.logger.finish(exit_code=3)
        raise
    except BaseException:
        trainer.logger.finish(exit_code=1)
        raise
    results = build_results(args, history, model.forward_mode, time.perf_counter() - start, code)
    trainer.logger.log_final(results["final"])
    trainer.logger.finish()
    if not args.disable_log:
        write_results(out, results)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    print(summary_table(results))
    if not args.disable_log:
        print(f"Results written to {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 3 non-finite loss (partial results saved), 128 + N stopped by signal N."""
    try:
        shared, members = split_members(sys.argv[1:] if argv is None else argv)
        if members:
            run_stack(parse_members(shared, members))
        else:
            run(parse_args(shared))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}; lower --lr or check the data", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"{e}: checkpoint saved; continue with --resume 1", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
