"""``run.py``: the paper's experiment grid, its flags, and the main that expands, checks and runs it.

On top of the reference launcher (``lvyilin/AdaB2N``, ``run.py``):

* **resume** — a run whose results JSON exists is skipped, and one that left a checkpoint (``utils/main.py``
  saves one when stopped by SIGTERM / SIGINT) continues from it with ``--resume 1``; a run left running by a killed
  launcher holds its lock and is waited for instead of started twice (:mod:`.processes`);
* **failures** — a failing run does not stop the grid; ``--retries`` retries it, and a summary lists each
  failure with its log; a run that diverged (non-finite loss, a partial results file) is done, not a failure;
* **tuning** — ``--tune validation`` chooses AdaB²N's configuration on the validation split first (:mod:`.tuning`);
* **where** — ``--launcher local`` places runs on idle GPUs found through NVML (or on CPU workers without GPUs,
  :mod:`.scheduler`), ``--launcher slurm`` submits a submitit job array (:mod:`.slurm`);
* **hyper-parameters** — every run loads the best args of its dataset, model and buffer size; ``--no_best_args``
  leaves them to ``--extra`` (a buffer size without best args, another learning rate);
* **stacks** — ``--stack K`` trains up to K compatible runs in one process as one network (:mod:`.stacks`).
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from collections.abc import Iterable, Sequence

from normcl.utils.core.commands import WANDB_PROJECT, CommandParser, DeprecatedAlias
from normcl.utils.core.errors import UserError
from normcl.utils.core.options import BINARY_FLAG
from normcl.utils.experiments.grid import (
    NO_BEST_ARGS_EXAMPLE,
    PAPER_ADA_T0S,
    PAPER_BUFFERS,
    PAPER_DATASETS,
    PAPER_KAPPAS,
    PAPER_METHODS,
    PAPER_MODELS,
    USAGE_THRESHOLD,
    USAGE_THRESHOLD_MINIIMG,
    check_unique,
    expand_grid,
    expand_validation,
    split_extra,
    validate_runs,
)
from normcl.utils.experiments.methods import NO_AFFINE_METHODS, PSEUDO_METHODS
from normcl.utils.experiments.processes import CommandBuilder, confirm, default_command, done_text, print_runs
from normcl.utils.experiments.scheduler import GpuProbe, execute, nvml_probe
from normcl.utils.experiments.slurm import slurm_minutes
from normcl.utils.experiments.stacks import stack_runs, stacking_text
from normcl.utils.experiments.tuning import run_tuned

TUNE_MODES = ("none", "validation")


def reserved_extra() -> dict[str, str]:
    """Flags ``--extra`` may not set, because the launcher sets them per run, with what to use instead: those declared
    so with the flag (``Roles.launcher``), and those that the methods' vocabulary sets (pseudo-methods, no affine)."""
    from normcl.utils.args import flag_roles

    reserved = {f"--{dest}": roles.launcher for dest, roles in flag_roles().items() if roles.launcher}
    methods = {f"--{key}": f"--methods {m}" for m, args in PSEUDO_METHODS.items() for key in args if key != "nl"}
    no_affine = f"--methods ({', '.join(sorted(NO_AFFINE_METHODS))} runs without affine parameters)"
    return {**reserved, **methods, "--no_affine": no_affine}


def build_parser() -> argparse.ArgumentParser:
    """``run.py``'s flags: the grid, AdaB²N's selection, execution, Slurm and the report."""
    from normcl.utils.args import HelpFormatter  # imported here: utils.args pulls in torch

    p = CommandParser(
        "normcl-grid",
        description="Run the AdaB2N paper's experiment grid (resumable), or report its results.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("grid (defaults: the paper's)")
    g.add_argument("--datasets", nargs="+", default=list(PAPER_DATASETS), help="datasets to run")
    g.add_argument("--models", nargs="+", default=list(PAPER_MODELS), help="continual-learning models to run")
    g.add_argument(
        "--methods",
        nargs="+",
        default=list(PAPER_METHODS),
        help=f"normalization layers (any --nl name) and the pseudo-methods {', '.join(PSEUDO_METHODS)}",
    )
    g.add_argument("--num_seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    g.add_argument("--buffer_sizes", type=int, nargs="+", default=None, help="buffer sizes (default: the paper's)")
    g.add_argument("--kappas", type=float, nargs="+", default=list(PAPER_KAPPAS), help="AdaB2N kappa values")
    g.add_argument(
        "--lambdas",
        type=float,
        nargs="+",
        default=None,
        help="AdaB2N lambd values (default: the paper's, 1e-5..1e-2 for seq-miniimg, else 0.01..10)",
    )
    g.add_argument("--ada_t0s", type=int, nargs="+", default=list(PAPER_ADA_T0S), help="AdaB2N ada_t0 values")
    g.add_argument("--bs", type=int, default=10, help="batch size of every run")
    g.add_argument("--epochs", type=int, default=1, help="epochs of every run")
    g.add_argument("--buffer_mode", choices=("reservoir", "ring"), default="reservoir", help="replay buffer mode")
    g.add_argument(
        "--extra",
        default="",
        help='flags for every run, e.g. --extra "--samples_per_class 300 --nf 20" (one flag: --extra=--flag)',
    )
    g.add_argument(
        "--no_best_args",
        action="store_true",
        help="runs without --load_best_args: --extra gives the hyper-parameters (--lr, and --alpha/--beta for "
        'DER/DER++), e.g. for a buffer size without best args: --buffer_sizes 50 --no_best_args --extra "--lr 0.03"',
    )
    g.add_argument("--interpreter", default=sys.executable, help="Python that runs utils/main.py")
    g.add_argument("--results_path", default="results", help="results folder of every run (resume looks here)")
    g.add_argument("--logdir", default="data/logs", help="folder of the runs' output, one NAME.txt per run")
    g.add_argument("--nowand", default=0, help="disable wandb in every run", **BINARY_FLAG)
    g.add_argument("--nowandb", action=DeprecatedAlias, dest="nowand", instead="--nowand")
    help_text = "wandb project of every run (a run's group: its dataset, model, buffer and method)"
    g.add_argument("--wandb_project", default=WANDB_PROJECT, help=help_text)

    t = p.add_argument_group("AdaB2N selection")
    t.add_argument(
        "--tune",
        choices=TUNE_MODES,
        default="none",
        help="none: every AdaB2N configuration on the test protocol, for every seed (the reference's); validation: "
        "phase 1 runs AdaB2N's configurations with --validation 1 for --tune_seeds, phase 2 the test grid with "
        "each column's best configuration for AdaB2N and AdaB2N-renorm",
    )
    t.add_argument("--tune_seeds", type=int, nargs="+", default=[0], help="seeds of the validation runs")

    r = p.add_argument_group("execution")
    r.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        metavar="{local,slurm}",
        help="local: idle GPUs through NVML, else --cpu_workers CPU processes; slurm: a submitit job array",
    )
    r.add_argument("--dry_run", action="store_true", help="print the runs and their count, start nothing")
    r.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    r.add_argument("--retries", type=int, default=0, help="retry a failed run up to N times")
    r.add_argument(
        "--usage_threshold",
        type=float,
        default=None,
        help=f"a GPU is idle below this memory-use fraction (default: {USAGE_THRESHOLD}, "
        f"{USAGE_THRESHOLD_MINIIMG} for seq-miniimg)",
    )
    r.add_argument("--max_per_gpu", type=int, default=1, help="runs (or stacks) of this launcher sharing one GPU")
    r.add_argument("--coldsecs", type=float, default=15, help="seconds between two starts")
    r.add_argument("--waitsecs", type=float, default=25, help="seconds between two polls for an idle GPU")
    r.add_argument("--cpu_workers", type=int, default=1, help="parallel runs (or stacks) when there is no GPU")
    r.add_argument(
        "--stack",
        type=int,
        default=1,
        metavar="K",
        help="train up to K runs that differ only in their seed, lr and norm or model options in one process as "
        "one network (utils/main.py --member); 1: one process per run",
    )

    s = p.add_argument_group("slurm (--launcher slurm, through submitit)")
    s.add_argument("--slurm_partition", default=None, help="partition (default: the cluster's)")
    s.add_argument("--slurm_time", type=slurm_minutes, default="24:00:00", help="time limit per run (or stack)")
    s.add_argument("--slurm_gpus_per_job", type=int, default=1, help="GPUs per run or stack (0: CPU)")
    s.add_argument("--slurm_cpus_per_job", type=int, default=4, help="CPUs per run (or stack)")
    s.add_argument("--slurm_mem", type=int, default=32, help="memory per run (or stack), GB")
    s.add_argument("--slurm_array_parallelism", type=int, default=64, help="jobs (runs or stacks) of the array at once")
    s.add_argument("--no_wait", action="store_true", help="submit and exit without waiting for the jobs")

    o = p.add_argument_group("report")
    o.add_argument("--report", action="store_true", help="only write the report of --results_path (utils/report.py)")
    o.add_argument("--report_dir", default=None, help="report folder (default: RESULTS_PATH/report)")
    return p


def _check_names(kind: str, names: Iterable[str], known: Sequence[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown {kind} {', '.join(repr(n) for n in unknown)}; choose among: {', '.join(known)}")


def _check_extra(args: Namespace) -> None:
    """``--extra`` may not set what the grid sets per run, and with ``--no_best_args`` must give ``--lr``."""
    flags = [token.split("=", 1)[0] for token in split_extra(args.extra)]
    reserved = reserved_extra()
    for flag in flags:
        if flag in reserved:
            raise UserError(f"--extra may not set {flag}: the launcher sets it per run; use {reserved[flag]}")
        if flag == "--validation" and args.tune == "validation":
            raise UserError(
                "--extra may not set --validation with --tune validation: phase 1 runs on the validation split, "
                "phase 2 on the test set; drop it from --extra"
            )
    if args.no_best_args and "--lr" not in flags:
        raise UserError(
            f"--no_best_args needs the runs' hyper-parameters in --extra, at least --lr ({NO_BEST_ARGS_EXAMPLE})"
        )


def validate_args(args: Namespace) -> None:
    """Reject bad launcher input before anything starts (unknown names, negative counts, kappa outside [0, 1])."""
    from normcl.datasets import DATASETS
    from normcl.models import MODELS
    from normcl.models.utils.adab2n import ADA_T0, KAPPA, LAMBD
    from normcl.models.utils.norms import NORMS

    _check_names("dataset", args.datasets, DATASETS.names())
    _check_names("model", args.models, MODELS.names())
    _check_names("method", args.methods, [*NORMS.names(), *PSEUDO_METHODS])
    counts = {
        "--num_seeds": (args.num_seeds, 1),
        "--bs": (args.bs, 1),
        "--epochs": (args.epochs, 1),
        "--retries": (args.retries, 0),
        "--max_per_gpu": (args.max_per_gpu, 1),
        "--cpu_workers": (args.cpu_workers, 1),
        "--stack": (args.stack, 1),
        "--slurm_gpus_per_job": (args.slurm_gpus_per_job, 0),
        "--slurm_cpus_per_job": (args.slurm_cpus_per_job, 1),
        "--slurm_mem": (args.slurm_mem, 1),
        "--slurm_array_parallelism": (args.slurm_array_parallelism, 1),
        "--slurm_time": (args.slurm_time, 1),
    }
    for flag, (value, least) in counts.items():
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    for flag in ("coldsecs", "waitsecs"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.buffer_sizes is not None and min(args.buffer_sizes) < 1:
        raise UserError(f"--buffer_sizes must be positive, got {args.buffer_sizes}")
    if args.usage_threshold is not None and not 0.0 < args.usage_threshold <= 1.0:
        raise UserError(f"--usage_threshold must lie in (0, 1], got {args.usage_threshold}")
    searched = {
        "--kappas": (args.kappas, KAPPA),
        "--lambdas": (args.lambdas or [], LAMBD),
        "--ada_t0s": (args.ada_t0s, ADA_T0),
    }
    for flag, (values, option) in searched.items():
        problem = next(filter(None, map(option.check, values)), None)  # AdaB2N's own range for the flag
        if problem is not None:
            raise UserError(f"{flag} {problem}, got {values}")
    missing = [d for d in args.datasets if d not in PAPER_BUFFERS]
    if args.buffer_sizes is None and missing:
        raise UserError(f"no default buffer sizes for {', '.join(missing)}; pass --buffer_sizes N ...")
    if min(args.tune_seeds) < 0:
        raise UserError(f"--tune_seeds must be >= 0, got {args.tune_seeds}")
    _check_extra(args)


def parse_launcher_args(argv: Sequence[str] | None = None) -> Namespace:
    """Parse and validate ``run.py``'s command line; raises ``UserError`` on bad values."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    return args


def main(
    argv: Sequence[str] | None = None, *, probe: GpuProbe = nvml_probe, command: CommandBuilder = default_command
) -> int:
    """``run.py``: expand, validate, then run the grid (or only report); returns the exit code."""
    try:
        args = parse_launcher_args(argv)
        if args.report:
            from normcl.utils.experiments import report

            out = [args.results_path] + ([] if args.report_dir is None else ["--out", args.report_dir])
            return report.main(out)
        runs = expand_grid(args)
        phase1 = expand_validation(args) if args.tune == "validation" else []
        check_unique([*phase1, *runs])
        validate_runs(phase1)
        validate_runs(runs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tune == "validation":
        return run_tuned(args, phase1, runs, probe, command)
    done = [r for r in runs if r.done]
    print(f"=> {len(runs)} run(s) in the grid: {done_text(runs)}", flush=True)
    if args.dry_run:
        jobs = stack_runs(runs, args.stack)
        print_runs(jobs, command)
        print(f"=> {len(runs)} run(s)")
        if args.stack > 1:
            print(stacking_text(jobs, args.stack))
        return 0
    if not args.yes and len(done) < len(runs) and not confirm(len(runs) - len(done)):
        print("=> nothing started")
        return 1
    summary = execute(runs, args, probe, command)
    print(summary.format(), flush=True)
    return summary.exit_code
