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

from normcl.datasets import DATASETS
from normcl.models import MODELS
from normcl.models.utils import NORMS
from normcl.models.utils.adab2n_options import SEARCHED
from normcl.utils.buffer_modes import BUFFER_MODES
from normcl.utils.core.commands import WANDB_PROJECT, CommandParser, DeprecatedAlias
from normcl.utils.core.errors import UserError
from normcl.utils.core.options import BINARY_FLAG, above_up_to, at_least, check_values, declare, positive
from normcl.utils.experiments.grid import (
    NO_BEST_ARGS_EXAMPLE,
    PAPER_BUFFERS,
    PAPER_DATASETS,
    PAPER_METHODS,
    PAPER_MODELS,
    PAPER_SEARCH,
    USAGE_THRESHOLD,
    USAGE_THRESHOLD_MINIIMG,
    check_unique,
    expand_grid,
    expand_validation,
    split_extra,
    validate_runs,
)
from normcl.utils.experiments.methods import PSEUDO_METHODS, no_affine_norms
from normcl.utils.experiments.processes import CommandBuilder, confirm, default_command, done_text, print_runs
from normcl.utils.experiments.scheduler import GpuProbe, execute, nvml_probe
from normcl.utils.experiments.slurm import slurm_minutes
from normcl.utils.experiments.stacks import stack_runs, stacking_text
from normcl.utils.experiments.tuning import run_tuned
from normcl.utils.parser import HelpFormatter, flag_roles

TUNE_MODES = ("none", "validation")


def reserved_extra() -> dict[str, str]:
    """Flags ``--extra`` may not set, because the launcher sets them per run, with what to use instead: those declared
    so with the flag (``Roles.launcher``), and those that the methods' vocabulary sets (pseudo-methods, no affine)."""
    reserved = {f"--{dest}": roles.launcher for dest, roles in flag_roles().items() if roles.launcher}
    methods = {f"--{key}": f"--methods {m}" for m, args in PSEUDO_METHODS.items() for key in args if key != "nl"}
    no_affine = f"--methods ({', '.join(no_affine_norms())} runs without affine parameters)"
    return {**reserved, **methods, "--no_affine": no_affine}


def build_parser() -> argparse.ArgumentParser:
    """``run.py``'s flags: the grid, AdaB²N's selection, execution, Slurm and the report, each with its value's
    check (:func:`validate_args`)."""
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
    declare(g, "--num_seeds", check=at_least(1), type=int, default=3, help="number of seeds (0 .. N-1)")
    declare(
        g,
        "--buffer_sizes",
        check=positive,
        type=int,
        nargs="+",
        default=None,
        help="buffer sizes (default: the paper's)",
    )
    for option in SEARCHED:  # --kappas, --lambdas, --ada_t0s: each searched option's values, checked as it is
        default = PAPER_SEARCH[option.dest]
        note = " (default: the paper's for the dataset)" if default is None else ""
        values = None if default is None else list(default)
        help = f"AdaB2N {option.dest} values{note}"
        declare(g, option.launcher, check=option.check, type=option.type, nargs="+", default=values, help=help)
    declare(g, "--bs", check=at_least(1), type=int, default=10, help="batch size of every run")
    declare(g, "--epochs", check=at_least(1), type=int, default=1, help="epochs of every run")
    g.add_argument("--buffer_mode", choices=BUFFER_MODES, default="reservoir", help="replay buffer mode")
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
    g.add_argument(
        "--wandb_project",
        default=WANDB_PROJECT,
        help="wandb project of every run (a run's group: its dataset, model, buffer and method)",
    )

    t = p.add_argument_group("AdaB2N selection")
    t.add_argument(
        "--tune",
        choices=TUNE_MODES,
        default="none",
        help="none: every AdaB2N configuration on the test protocol, for every seed (the reference's); validation: "
        "phase 1 runs AdaB2N's configurations with --validation 1 for --tune_seeds, phase 2 the test grid with "
        "each column's best configuration for AdaB2N and AdaB2N-renorm",
    )
    declare(t, "--tune_seeds", check=at_least(0), type=int, nargs="+", default=[0], help="seeds of the validation runs")

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
    declare(r, "--retries", check=at_least(0), type=int, default=0, help="retry a failed run up to N times")
    declare(
        r,
        "--usage_threshold",
        check=above_up_to(0, 1),
        type=float,
        default=None,
        help=f"a GPU is idle below this memory-use fraction (default: {USAGE_THRESHOLD}, "
        f"{USAGE_THRESHOLD_MINIIMG} for seq-miniimg)",
    )
    declare(
        r,
        "--max_per_gpu",
        check=at_least(1),
        type=int,
        default=1,
        help="runs (or stacks) of this launcher sharing one GPU",
    )
    declare(r, "--coldsecs", check=at_least(0), type=float, default=15, help="seconds between two starts")
    declare(
        r, "--waitsecs", check=at_least(0), type=float, default=25, help="seconds between two polls for an idle GPU"
    )
    declare(
        r,
        "--cpu_workers",
        check=at_least(1),
        type=int,
        default=1,
        help="parallel runs (or stacks) when there is no GPU",
    )
    declare(
        r,
        "--stack",
        check=at_least(1),
        type=int,
        default=1,
        metavar="K",
        help="train up to K runs that differ only in their seed, lr and norm or model options in one process as "
        "one network (utils/main.py --member); 1: one process per run",
    )

    s = p.add_argument_group("slurm (--launcher slurm, through submitit)")
    s.add_argument("--slurm_partition", default=None, help="partition (default: the cluster's)")
    declare(
        s,
        "--slurm_time",
        check=at_least(1),
        type=slurm_minutes,
        default="24:00:00",
        help="time limit per run (or stack)",
    )
    declare(s, "--slurm_gpus_per_job", check=at_least(0), type=int, default=1, help="GPUs per run or stack (0: CPU)")
    declare(s, "--slurm_cpus_per_job", check=at_least(1), type=int, default=4, help="CPUs per run (or stack)")
    declare(s, "--slurm_mem", check=at_least(1), type=int, default=32, help="memory per run (or stack), GB")
    declare(
        s,
        "--slurm_array_parallelism",
        check=at_least(1),
        type=int,
        default=64,
        help="jobs (runs or stacks) of the array at once",
    )
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


def validate_args(parser: argparse.ArgumentParser, args: Namespace) -> None:
    """Reject bad launcher input before anything starts: unknown names, then every flag's declared check (negative
    counts, kappa outside [0, 1]), then what the grid cannot run."""
    _check_names("dataset", args.datasets, DATASETS.names())
    _check_names("model", args.models, MODELS.names())
    _check_names("method", args.methods, [*NORMS.names(), *PSEUDO_METHODS])
    check_values(parser, args)
    missing = [d for d in args.datasets if d not in PAPER_BUFFERS]
    if args.buffer_sizes is None and missing:
        raise UserError(f"no default buffer sizes for {', '.join(missing)}; pass --buffer_sizes N ...")
    _check_extra(args)


def parse_launcher_args(argv: Sequence[str] | None = None) -> Namespace:
    """Parse and validate ``run.py``'s command line; raises ``UserError`` on bad values."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return args


def main(
    argv: Sequence[str] | None = None, *, probe: GpuProbe = nvml_probe, command: CommandBuilder = default_command
) -> int:
    """``run.py``: expand, validate, then run the grid (or only report); returns the exit code."""
    try:
        args = parse_launcher_args(argv)
        if args.report:
            from normcl.utils.experiments import report  # matplotlib: for the report alone, not every launch

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
        if args.stack > 1:
            print(stacking_text(jobs, args.stack))
        print(f"=> {len(runs)} run(s)")  # last: the grid's size (a results page's plan reads it)
        return 0
    if not args.yes and len(done) < len(runs) and not confirm(len(runs) - len(done)):
        print("=> nothing started")
        return 1
    summary = execute(runs, args, probe, command)
    print(summary.format(), flush=True)
    return summary.exit_code
