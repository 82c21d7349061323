"""The paper's experiment grid (``run.py``): expansion, validation, and execution on GPUs, CPUs or Slurm.

The grid and its flags follow the launcher of the AdaB²N reference code (``lvyilin/AdaB2N``, ``run.py``): every
combination of seed, dataset, normalization method, model and buffer size, AdaB²N expanded over its
``kappa × lambd × ada_t0`` search space, each run started as ``utils/main.py --load_best_args ...`` with its
output in ``--logdir/NAME.txt``. On top of the reference:

* **resume** — a run whose results JSON exists is skipped, and one that left a checkpoint (``utils/main.py``
  saves one when stopped by SIGTERM / SIGINT) continues from it with ``--resume 1``; a run is executed while
  holding an ``flock`` on a hidden lock file next to its results file, and the lock is inherited by the child
  process, so a run left running by a killed launcher is waited for instead of started twice;
* **failures** — a failing run does not stop the grid; ``--retries`` retries it, and a summary lists each
  failure with its log;
* **tuning** — ``--tune validation`` chooses AdaB²N's configuration as the paper does: phase 1 runs the
  configurations on the validation split (``--validation 1``, names ending in ``_val``) for ``--tune_seeds``, then
  phase 2 the test grid with, for AdaB²N and its pseudo-methods, only each column's choice (the report's rule);
* **where** — ``--launcher local`` places runs on idle GPUs found through NVML (or on CPU workers without GPUs),
  ``--launcher slurm`` submits a submitit job array whose jobs run the same command as a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from argparse import Namespace
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from utils.core.errors import UserError

PAPER_DATASETS = ("seq-cifar10", "seq-cifar100", "seq-miniimg")
PAPER_MODELS = ("derpp", "er_ace")
PAPER_METHODS = ("BN", "LN", "IN", "GN", "CN", "AdaB2N")
PAPER_BUFFERS: dict[str, tuple[int, ...]] = {
    "seq-cifar10": (500, 2000),
    "seq-cifar100": (2000, 5000),
    "seq-miniimg": (2000, 5000),
    "seq-fmnist": (200, 500),
}
PAPER_KAPPAS = (0.1, 0.4, 0.7, 1.0)
PAPER_LAMBDAS = (0.01, 0.1, 1.0, 10.0)
PAPER_LAMBDAS_MINIIMG = (1e-5, 1e-4, 1e-3, 1e-2)
PAPER_ADA_T0S = (0, 1)
USAGE_THRESHOLD = 0.3
USAGE_THRESHOLD_MINIIMG = 0.1
"""The reference waits for a GPU below 10% memory use for Mini-ImageNet, whose runs are the largest."""

ADAPTIVE_NORM = "AdaB2N"
PSEUDO_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "BN-joint": ("BN", ("--forward_mode", "joint")),
    "AdaB2N-renorm": (ADAPTIVE_NORM, ("--adab2n_renorm", "1")),
}
"""Methods that are a registered norm plus flags: name -> (``--nl``, extra flags)."""

TUNE_MODES = ("none", "validation")
VALIDATION_SUFFIX = "_val"
"""Appended to the run, results and wandb names of ``--tune validation``'s phase-1 runs."""

NO_AFFINE_METHODS = frozenset({"CN"})
"""As the reference launcher (and the official CN code, whose optimiser has no affine parameters)."""

RESERVED_EXTRA = {
    "--dataset": "--datasets",
    "--model": "--models",
    "--seed": "--num_seeds",
    "--buffer_size": "--buffer_sizes",
    "--buffer_mode": "--buffer_mode",
    "--nl": "--methods",
    "--kappa": "--kappas",
    "--lambd": "--lambdas",
    "--ada_t0": "--ada_t0s",
    "--adab2n_renorm": "--methods AdaB2N-renorm",
    "--forward_mode": "--methods BN-joint",
    "--no_affine": "--methods (CN runs without affine parameters)",
    "--bs": "--bs",
    "--epochs": "--epochs",
    "--run_name": "the grid's run names",
    "--results_path": "--results_path",
    "--wandb_project": "--wandb_project",
    "--wandb_name": "the grid's run names",
    "--wandb_group": "the grid's groups",
    "--nowand": "--nowandb",
    "--load_best_args": "the grid (every run loads the best args)",
    "--disable_log": "nothing: resume needs each run's results file",
    "--resume": "nothing: runs with a checkpoint are resumed from it",
}
"""Flags ``--extra`` may not set, because the launcher sets them per run, with the launcher flag to use instead."""

POLL_SECONDS = 0.2
"""How often the local scheduler looks for finished processes."""

GpuProbe = Callable[[], list[tuple[int, float]]]
"""Returns ``(index, used memory fraction)`` for every GPU; raises :class:`NoGpuError` when there is none."""

CommandBuilder = Callable[["Run", "int | None"], list[str]]
"""Builds a run's command line; the second argument is the CPU thread count when the run goes to the CPU."""


Config = tuple[float, float, int]
"""An AdaB²N configuration ``(kappa, lambd, ada_t0)``, as ``utils.report.Config``."""

GridKey = tuple[str, str, int | None]
"""A column of the paper's table, ``(dataset, model, buffer size)``: AdaB²N's configuration is chosen per column."""

ConfigsOf = Callable[[str, str, int | None], Sequence[Config]]
"""The AdaB²N configurations to run in a column (none: the column's AdaB²N runs are left out)."""


class NoGpuError(RuntimeError):
    """NVML is missing or sees no GPU: the local launcher falls back to CPU workers."""


@dataclass(frozen=True)
class Run:
    """One experiment of the grid: everything needed to start it and to know whether it is done."""

    name: str
    dataset: str
    model: str
    buffer_size: int | None
    method: str
    seed: int
    argv: tuple[str, ...]
    results: Path
    log: Path
    usage_threshold: float
    interpreter: str
    workdir: Path
    config: Config | None = None
    validation: bool = False

    @property
    def lock(self) -> Path:
        """Hidden lock file next to the results file: resume and the lock key on the same path."""
        return self.results.parent / f".{self.results.name}.lock"


def default_command(run: Run, cpu_threads: int | None) -> list[str]:
    """``INTERPRETER -m utils.main FLAGS``; CPU placement adds ``--device cpu --num_threads N`` before the flags
    so that ``--extra`` can still override them, and a run interrupted earlier continues from its checkpoint."""
    from utils.checkpoint import checkpoint_file

    cpu = ["--device", "cpu", "--num_threads", str(cpu_threads)] if cpu_threads is not None else []
    resume = ["--resume", "1"] if checkpoint_file(run.results).exists() else []
    return [run.interpreter, "-m", "utils.main", *cpu, *run.argv, *resume]


# ----------------------------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """Bad input ends with one line and exit code 2, like ``utils/main.py``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def _minutes(text: str) -> int:
    """Slurm time: ``MINUTES``, ``HH:MM:SS`` or ``D-HH:MM:SS``, as minutes for submitit's ``timeout_min``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text)
    if text.isdigit():
        return int(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not a Slurm time (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def build_parser() -> argparse.ArgumentParser:
    from utils.args import HelpFormatter  # imported here: utils.args pulls in torch

    p = _Parser(
        prog="python run.py",
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
        help="normalization layers (any --nl name) and the pseudo-methods BN-joint, AdaB2N-renorm",
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
    g.add_argument("--interpreter", default=sys.executable, help="Python that runs utils/main.py")
    g.add_argument("--results_path", default="results", help="results folder of every run (resume looks here)")
    g.add_argument("--logdir", default="data/logs", help="folder of the runs' output, one NAME.txt per run")
    g.add_argument("--nowandb", action="store_true", help="disable wandb in every run")
    g.add_argument("--wandb_project", default="CL", help="wandb project prefix (the dataset is appended)")

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
    r.add_argument("--max_per_gpu", type=int, default=1, help="runs of this launcher sharing one GPU")
    r.add_argument("--coldsecs", type=float, default=15, help="seconds between two starts")
    r.add_argument("--waitsecs", type=float, default=25, help="seconds between two polls for an idle GPU")
    r.add_argument("--cpu_workers", type=int, default=1, help="parallel runs when there is no GPU")

    s = p.add_argument_group("slurm (--launcher slurm, through submitit)")
    s.add_argument("--slurm_partition", default=None, help="partition (default: the cluster's)")
    s.add_argument("--slurm_time", type=_minutes, default="24:00:00", help="time limit per run")
    s.add_argument("--slurm_gpus_per_job", type=int, default=1, help="GPUs per run (0: CPU)")
    s.add_argument("--slurm_cpus_per_job", type=int, default=4, help="CPUs per run")
    s.add_argument("--slurm_mem", type=int, default=32, help="memory per run, GB")
    s.add_argument("--slurm_array_parallelism", type=int, default=64, help="runs of the array at once")
    s.add_argument("--no_wait", action="store_true", help="submit and exit without waiting for the jobs")

    o = p.add_argument_group("report")
    o.add_argument("--report", action="store_true", help="only write the report of --results_path (utils/report.py)")
    o.add_argument("--report_dir", default=None, help="report folder (default: RESULTS_PATH/report)")
    return p


def _check_names(kind: str, names: Iterable[str], known: Sequence[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown {kind} {', '.join(repr(n) for n in unknown)}; choose among: {', '.join(known)}")


def validate_args(args: Namespace) -> None:
    """Reject bad launcher input before anything starts (unknown names, negative counts, kappa outside [0, 1])."""
    from datasets import DATASETS
    from models import MODELS
    from models.utils.norms import NORMS

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
    if any(not 0.0 <= k <= 1.0 for k in args.kappas):
        raise UserError(f"--kappas must lie in [0, 1], got {args.kappas}")
    if args.lambdas is not None and any(not lam >= 0.0 for lam in args.lambdas):
        raise UserError(f"--lambdas must be >= 0, got {args.lambdas}")
    if min(args.ada_t0s) < 0:
        raise UserError(f"--ada_t0s must be task indices >= 0, got {args.ada_t0s}")
    missing = [d for d in args.datasets if d not in PAPER_BUFFERS]
    if args.buffer_sizes is None and missing:
        raise UserError(f"no default buffer sizes for {', '.join(missing)}; pass --buffer_sizes N ...")
    if min(args.tune_seeds) < 0:
        raise UserError(f"--tune_seeds must be >= 0, got {args.tune_seeds}")
    for token in split_extra(args.extra):
        flag = token.split("=", 1)[0]
        if flag in RESERVED_EXTRA:
            raise UserError(f"--extra may not set {flag}: the launcher sets it per run; use {RESERVED_EXTRA[flag]}")
        if flag == "--validation" and args.tune == "validation":
            raise UserError(
                "--extra may not set --validation with --tune validation: phase 1 runs on the validation split, "
                "phase 2 on the test set; drop it from --extra"
            )


def split_extra(extra: str) -> list[str]:
    try:
        return shlex.split(extra)
    except ValueError as e:
        raise UserError(f"--extra {extra!r} cannot be split into flags ({e})") from None


def parse_launcher_args(argv: Sequence[str] | None = None) -> Namespace:
    """Parse and validate ``run.py``'s command line; raises ``UserError`` on bad values."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    return args


# ----------------------------------------------------------------------------------------------- grid


def _number(value: float) -> str:
    """Floats as the reference's names print them (0.1, 1.0, 1e-05): the same value always gives the same name."""
    return repr(float(value))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def method_label(method: str, kappa: float | None = None, lambd: float | None = None, ada_t0: int | None = None) -> str:
    """``AdaB2N_kappa0.4_lambd0.1_ada1`` for AdaB²N configurations, else the method itself (as the reference)."""
    if kappa is None:
        return method
    return f"{method}_kappa{_number(kappa)}_lambd{_number(lambd)}_ada{ada_t0}"


def run_name(dataset: str, epochs: int, model: str, buffer: int | None, label: str, seed: int, mode: str) -> str:
    """The reference's run name: dataset, epochs, model, buffer, method (+ AdaB²N hyper-parameters), seed, mode."""
    buf = "none" if buffer is None else str(buffer)
    return _safe(f"{dataset}_ep{epochs}_{model}_buf{buf}_{label}_seed{seed}_{mode}")


def _adaptive_configs(args: Namespace, dataset: str) -> list[Config]:
    default_lambdas = PAPER_LAMBDAS_MINIIMG if dataset == "seq-miniimg" else PAPER_LAMBDAS
    lambdas = args.lambdas if args.lambdas is not None else default_lambdas
    return list(itertools.product(args.kappas, lambdas, args.ada_t0s))


def norm_of(method: str) -> str:
    """The ``--nl`` of a method: itself, or the norm under a pseudo-method."""
    return PSEUDO_METHODS.get(method, (method, ()))[0]


def _expand(
    args: Namespace, seeds: Iterable[int], methods: Sequence[str], configs_of: ConfigsOf, validation: bool = False
) -> list[Run]:
    """The runs of ``seeds × datasets × methods × models × buffers`` (the reference's order), each AdaB²N method
    with ``configs_of``'s configurations; ``validation`` runs get ``--validation 1`` and a ``_val`` suffix on their
    run, results and wandb names so that they never collide with the test runs of the same configuration."""
    from datasets import get_dataset_class
    from models import MODELS
    from utils.results import results_file

    results_root = Path(args.results_path).resolve()
    logdir = Path(args.logdir).resolve()
    extra = split_extra(args.extra)
    suffix = VALIDATION_SUFFIX if validation else ""
    runs: list[Run] = []
    for seed, dataset, method, model in itertools.product(seeds, args.datasets, methods, args.models):
        nl, method_flags = PSEUDO_METHODS.get(method, (method, ()))
        uses_buffer = MODELS.get(model).USES_BUFFER
        buffers: Sequence[int | None] = (args.buffer_sizes or PAPER_BUFFERS[dataset]) if uses_buffer else [None]
        setting = get_dataset_class(dataset).SETTING
        threshold = args.usage_threshold
        if threshold is None:
            threshold = USAGE_THRESHOLD_MINIIMG if dataset == "seq-miniimg" else USAGE_THRESHOLD
        for buffer in buffers:
            configs: Sequence[Config | None] = configs_of(dataset, model, buffer) if nl == ADAPTIVE_NORM else [None]
            for config in configs:
                kappa, lambd, ada_t0 = config if config is not None else (None, None, None)
                label = method_label(method, kappa, lambd, ada_t0)
                name = run_name(dataset, args.epochs, model, buffer, label, seed, args.buffer_mode) + suffix
                buf = "" if buffer is None else str(buffer)
                argv = ["--load_best_args", "--seed", str(seed), "--dataset", dataset, "--model", model]
                argv += ["--nl", nl, *method_flags]
                if buffer is not None:
                    argv += ["--buffer_size", str(buffer)]
                argv += ["--epochs", str(args.epochs), "--bs", str(args.bs), "--buffer_mode", args.buffer_mode]
                if kappa is not None:
                    argv += ["--kappa", _number(kappa), "--lambd", _number(lambd), "--ada_t0", str(ada_t0)]
                if method in NO_AFFINE_METHODS:
                    argv += ["--no_affine", "1"]
                if validation:
                    argv += ["--validation", "1"]
                argv += ["--run_name", name, "--results_path", str(results_root)]
                argv += ["--wandb_project", f"{args.wandb_project}_{dataset}", "--wandb_name", name]
                argv += ["--wandb_group", f"{model}{buf}_{label}{suffix}"]
                if args.nowandb:
                    argv += ["--nowand", "1"]
                argv += extra
                spec = Namespace(
                    results_path=results_root, setting=setting, dataset=dataset, model=model, run_name=name
                )
                runs.append(
                    Run(
                        name=name,
                        dataset=dataset,
                        model=model,
                        buffer_size=buffer,
                        method=method,
                        seed=seed,
                        argv=tuple(argv),
                        results=results_file(spec),
                        log=logdir / f"{name}.txt",
                        usage_threshold=threshold,
                        interpreter=args.interpreter,
                        workdir=Path.cwd(),
                        config=config,
                        validation=validation,
                    )
                )
    return runs


def expand_grid(args: Namespace) -> list[Run]:
    """Every run of the grid, in the reference's order (seed, dataset, method, model, buffer, AdaB²N config)."""
    return _expand(args, range(args.num_seeds), args.methods, lambda dataset, *_: _adaptive_configs(args, dataset))


def expand_validation(args: Namespace) -> list[Run]:
    """Phase 1 of ``--tune validation``: plain AdaB²N, every configuration, on the validation split, for the
    ``--tune_seeds`` only. Its pseudo-methods (``AdaB2N-renorm``) reuse its choice instead of a search of their own,
    so phase 1 runs AdaB²N whenever any method of its family is in ``--methods``."""
    tuned = any(norm_of(m) == ADAPTIVE_NORM for m in args.methods)
    methods = [ADAPTIVE_NORM] if tuned else []
    return _expand(args, args.tune_seeds, methods, lambda dataset, *_: _adaptive_configs(args, dataset), True)


def expand_test(args: Namespace, chosen: dict[GridKey, Config]) -> list[Run]:
    """Phase 2 of ``--tune validation``: the test grid, each AdaB²N-family method only at its column's ``chosen``
    configuration; a column without a choice has no AdaB²N runs (yet)."""

    def configs_of(dataset: str, model: str, buffer: int | None) -> list[Config]:
        config = chosen.get((dataset, model, buffer))
        return [] if config is None else [config]

    return _expand(args, range(args.num_seeds), args.methods, configs_of)


def validate_runs(runs: Sequence[Run]) -> None:
    """Parse each distinct configuration with ``utils/main.py``'s own parser, so that a grid whose runs would all
    fail (no best args for a buffer size, a misspelt ``--extra`` flag) stops here with one line instead."""
    from utils.args import parse_args

    first_seed = min((r.seed for r in runs), default=0)
    for run in runs:
        if run.seed != first_seed:
            continue
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parse_args(list(run.argv))
        except UserError as e:
            raise UserError(f"run {run.name} would fail: {e}") from None
        except SystemExit:
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            reason = lines[-1] if lines else "invalid arguments"
            raise UserError(f"run {run.name} would fail: {reason} (check --extra)") from None


def column_label(key: GridKey) -> str:
    """A column as the report labels it: ``seq-fmnist er_ace 200``."""
    dataset, model, buffer = key
    return f"{dataset} {model}" + ("" if buffer is None else f" {buffer}")


@dataclass
class Selection:
    """What the validation runs chose: a configuration per column, its mean validation accuracy, and for each
    column without a choice why (the validation runs without results, with their logs)."""

    chosen: dict[GridKey, Config] = field(default_factory=dict)
    accuracy: dict[GridKey, float] = field(default_factory=dict)
    missing: dict[GridKey, list[str]] = field(default_factory=dict)


def select_from_validation(phase1: Sequence[Run]) -> Selection:
    """Choose each column's AdaB²N configuration from its phase-1 results with the report's loader and rule
    (``utils.report.select_configs``), so ``run.py`` runs the configuration that the tables will report. Only the
    phase-1 runs' own results files count, and a column is chosen only once all of them exist: choosing among the
    runs that happened to succeed would pick another configuration after they are retried."""
    from utils.report import Record, load_records, select_configs

    selection = Selection()
    if not phase1:
        return selection
    wanted = {run.results: run for run in phase1}
    roots = {run.results.parent for run in phase1}
    records: list[Record] = []
    warnings: list[str] = []
    for root in sorted(roots):
        found, notes = load_records(root) if root.is_dir() else ([], [])
        ours = [r for r in found if r.path in wanted]
        # Other validation runs of a column with the same protocol count too, as they do in the report's choice.
        protocol = {(r.dataset, r.model, r.buffer_size): r.protocol for r in ours}
        records += ours + [
            r
            for r in found
            if r.path not in wanted and r.validation and protocol.get((r.dataset, r.model, r.buffer_size)) == r.protocol
        ]
        warnings += notes
    loaded = {r.path for r in records if r.path in wanted}
    columns: dict[GridKey, list[Run]] = {}
    for run in phase1:
        columns.setdefault((run.dataset, run.model, run.buffer_size), []).append(run)
    for key, runs in columns.items():
        reasons = []
        for run in runs:
            if run.results in loaded:
                continue
            if run.results.exists():
                why = next((w for w in warnings if str(run.results) in w), "unreadable results file")
                reasons.append(f"{run.name} ({why})")
            else:
                reasons.append(f"{run.name} (no results; log {run.log})")
        if reasons:
            selection.missing[key] = reasons
    usable = [r for r in records if (r.dataset, r.model, r.buffer_size) not in selection.missing]
    for key, config in select_configs(usable).items():
        selection.chosen[key] = config
        values = [r.class_il for r in usable if (r.dataset, r.model, r.buffer_size) == key and r.config == config]
        selection.accuracy[key] = sum(values) / len(values)
    return selection


# ----------------------------------------------------------------------------------------------- running one run


class RunLock:
    """An exclusive ``flock`` on a run's lock file, held by whoever executes the run.

    The child process inherits the descriptor, so the lock outlives a launcher killed with ``kill -9`` for as long
    as its orphaned run keeps going, and a second launcher does not start that run again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """``False`` when another process holds the lock; ``True`` when this one does, or when the filesystem
        cannot lock (the run then goes ahead unprotected, as without this lock)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            return True
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def start_run(run: Run, command: Sequence[str], env: dict[str, str], lock: RunLock, attempt: int) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr appended to the run's log (after a header line with the command)."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "a") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"# {stamp} attempt {attempt}: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run.workdir,
            pass_fds=() if lock.fd is None else (lock.fd,),
        )


# ----------------------------------------------------------------------------------------------- outcomes


@dataclass
class Summary:
    """What became of each run: done, skipped (results existed), failed (with its log) or interrupted."""

    done: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    interrupted: list[Run] = field(default_factory=list)
    submitted: list[tuple[Run, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def format(self, title: str = "summary") -> str:
        parts = [f"{len(self.done)} done", f"{len(self.skipped)} skipped (results existed)"]
        parts.append(f"{len(self.failed)} failed")
        if self.interrupted:
            parts.append(f"{len(self.interrupted)} interrupted")
        if self.submitted:
            parts.append(f"{len(self.submitted)} submitted, not waited for")
        lines = [f"=> {title}: {', '.join(parts)}"]
        lines += [f"   failed: {run.name} ({why}); log: {run.log}" for run, why in self.failed]
        lines += [f"   interrupted: {run.name}; log: {run.log}" for run in self.interrupted]
        lines += [f"   submitted: {run.name} as job {job}; log: {run.log}" for run, job in self.submitted]
        if self.interrupted:
            lines.append("   run the same command again to finish the missing runs")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- local launcher


def nvml_probe() -> list[tuple[int, float]]:
    """Memory-use fraction of every GPU, through NVML (``pynvml``); :class:`NoGpuError` without a driver."""
    try:
        import pynvml
    except ImportError as e:
        raise NoGpuError(f"pynvml is not installed ({e})") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NoGpuError(f"NVML is not available ({e})") from None
    try:
        usage = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            usage.append((index, memory.used / memory.total))
        return usage
    except pynvml.NVMLError as e:
        raise NoGpuError(f"NVML query failed ({e})") from None
    finally:
        pynvml.nvmlShutdown()


def allowed_gpus(env: dict[str, str]) -> set[int] | None:
    """GPUs the parent's numeric ``CUDA_VISIBLE_DEVICES`` allows (``None``: all; UUID lists are not filtered)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    items = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in items):
        return None
    return {int(v) for v in items}


def choose_gpu(
    usage: Iterable[tuple[int, float]], ours: Counter[int], threshold: float, max_per_gpu: int
) -> int | None:
    """The freest GPU below ``threshold`` memory use that runs fewer than ``max_per_gpu`` of our runs."""
    candidates = [(used, ours[i], i) for i, used in usage if used < threshold and ours[i] < max_per_gpu]
    return min(candidates)[2] if candidates else None


@dataclass
class _Running:
    run: Run
    proc: subprocess.Popen
    lock: RunLock
    gpu: int | None


class LocalScheduler:
    """Starts runs on idle GPUs (one ``CUDA_VISIBLE_DEVICES`` each) or, without GPUs, on ``cpu_workers`` CPU
    processes; ``probe`` and ``command`` are injectable so the placement logic can be tested without GPUs."""

    def __init__(
        self,
        runs: Sequence[Run],
        *,
        probe: GpuProbe = nvml_probe,
        command: CommandBuilder = default_command,
        max_per_gpu: int = 1,
        cpu_workers: int = 1,
        coldsecs: float = 15,
        waitsecs: float = 25,
        retries: int = 0,
        out: TextIO | None = None,
    ) -> None:
        self.runs = list(runs)
        self.probe = probe
        self.command = command
        self.max_per_gpu = max_per_gpu
        self.cpu_workers = cpu_workers
        self.coldsecs = coldsecs
        self.waitsecs = waitsecs
        self.retries = retries
        self.out = out or sys.stdout
        self.env = dict(os.environ)
        self.gpu_mode = False

    def _say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def _usage(self) -> list[tuple[int, float]]:
        """The probe's GPUs that the parent's ``CUDA_VISIBLE_DEVICES`` allows."""
        allowed = allowed_gpus(self.env)
        return [(i, u) for i, u in self.probe() if allowed is None or i in allowed]

    def _detect(self) -> None:
        try:
            usage = self._usage()
        except NoGpuError as e:
            usage = []
            self._say(f"=> no GPU: {e}")
        self.gpu_mode = bool(usage)
        if self.gpu_mode:
            self._say(f"=> GPUs {', '.join(str(i) for i, _ in usage)}; at most {self.max_per_gpu} run(s) per GPU")
        else:
            threads = self.cpu_threads()
            self._say(f"=> running on the CPU: {self.cpu_workers} worker(s) x {threads} thread(s)")

    def cpu_threads(self) -> int:
        """``--num_threads`` of a CPU run: the cores shared by the workers, so they do not oversubscribe them."""
        return max(1, (os.cpu_count() or 1) // self.cpu_workers)

    def _slot(self, run: Run, running: list[_Running]) -> tuple[bool, int | None]:
        """(free, gpu): whether ``run`` can start now, and on which GPU (``None`` on the CPU)."""
        if not self.gpu_mode:
            return len(running) < self.cpu_workers, None
        ours = Counter(r.gpu for r in running if r.gpu is not None)
        try:
            usage = self._usage()
        except NoGpuError as e:
            self._say(f"=> GPU probe failed ({e}); trying again")
            usage = []
        gpu = choose_gpu(usage, ours, run.usage_threshold, self.max_per_gpu)
        return gpu is not None, gpu

    def _start(self, run: Run, gpu: int | None, lock: RunLock, attempt: int) -> _Running:
        env = dict(self.env)
        if gpu is not None:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's numbering
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            command = self.command(run, None)
        else:
            command = self.command(run, self.cpu_threads())
        proc = start_run(run, command, env, lock, attempt)
        where = f"GPU {gpu}" if gpu is not None else "CPU"
        self._say(f"=> started {run.name} on {where} (attempt {attempt}, log {run.log})")
        return _Running(run, proc, lock, gpu)

    def run(self) -> Summary:
        summary = Summary()
        pending = deque(self.runs)
        running: list[_Running] = []
        deferred: list[Run] = []
        attempts: Counter[str] = Counter()
        waiting = False
        self._detect()
        try:
            while pending or running or deferred:
                self._reap(running, pending, attempts, summary)
                if pending:
                    run = pending[0]
                    if run.results.exists():
                        pending.popleft()
                        summary.skipped.append(run)
                        continue
                    free, gpu = self._slot(run, running)
                    if free:
                        waiting = False
                        pending.popleft()
                        lock = RunLock(run.lock)
                        if not lock.acquire():
                            self._say(f"=> {run.name} is running in another launcher; waiting for it")
                            deferred.append(run)
                            continue
                        if run.results.exists():
                            lock.release()
                            summary.skipped.append(run)
                            continue
                        attempts[run.name] += 1
                        running.append(self._start(run, gpu, lock, attempts[run.name]))
                        time.sleep(self.coldsecs)
                        continue
                    if self.gpu_mode and not waiting:
                        self._say(f"=> waiting for an idle GPU (below {run.usage_threshold:.0%} memory use)")
                    waiting = self.gpu_mode
                    time.sleep(max(self.waitsecs, POLL_SECONDS) if self.gpu_mode else POLL_SECONDS)
                elif deferred and not running:
                    time.sleep(max(self.waitsecs, POLL_SECONDS))
                    pending.extend(deferred)
                    deferred.clear()
                else:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._say("=> interrupted: stopping the runs this launcher started")
            for item in running:
                item.proc.terminate()
            for item in running:
                try:
                    item.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    item.proc.kill()
                    item.proc.wait()
                item.lock.release()
                summary.interrupted.append(item.run)
        return summary

    def _reap(self, running: list[_Running], pending: deque[Run], attempts: Counter[str], summary: Summary) -> None:
        for item in list(running):
            code = item.proc.poll()
            if code is None:
                continue
            running.remove(item)
            item.lock.release()
            if code == 0:
                summary.done.append(item.run)
                self._say(f"=> finished {item.run.name}")
            elif attempts[item.run.name] <= self.retries:
                self._say(f"=> {item.run.name} failed (exit code {code}); retrying, log {item.run.log}")
                pending.append(item.run)
            else:
                summary.failed.append((item.run, f"exit code {code}"))
                self._say(f"=> {item.run.name} failed (exit code {code}); log {item.run.log}")


# ----------------------------------------------------------------------------------------------- slurm launcher


@dataclass(frozen=True)
class JobOutcome:
    """What a submitit job reports back: ``state`` is done, skipped, busy or failed."""

    state: str
    detail: str = ""


def job_entry(run: Run, cpu_threads: int | None, attempt: int = 1) -> JobOutcome:
    """The function of each Slurm job: the run's command as a subprocess, exactly as the local launcher runs it."""
    if run.results.exists():
        return JobOutcome("skipped")
    lock = RunLock(run.lock)
    if not lock.acquire():
        return JobOutcome("busy", "running elsewhere")
    try:
        if run.results.exists():
            return JobOutcome("skipped")
        proc = start_run(run, default_command(run, cpu_threads), dict(os.environ), lock, attempt)
        code = proc.wait()
    finally:
        lock.release()
    return JobOutcome("done") if code == 0 else JobOutcome("failed", f"exit code {code}")


def make_executor(args: Namespace, folder: Path) -> Any:
    """A submitit executor: Slurm, or submitit's local executor for ``--launcher submitit-local`` (tests)."""
    import submitit

    cluster = "slurm" if args.launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    gpus = args.slurm_gpus_per_job if cluster == "slurm" else 0
    executor.update_parameters(
        name="normcl",
        timeout_min=args.slurm_time,
        gpus_per_node=gpus,
        cpus_per_task=args.slurm_cpus_per_job,
        mem_gb=args.slurm_mem,
        slurm_partition=args.slurm_partition,
        slurm_array_parallelism=args.slurm_array_parallelism,
    )
    return executor


def _interrupt_jobs(args: Namespace, runs: Sequence[Run], jobs: Sequence[Any], summary: Summary, out: TextIO) -> None:
    """Ctrl-C: local jobs are cancelled; Slurm jobs keep going (they are resumable), and the message says how to
    cancel them."""
    if args.launcher == "slurm":
        ids = " ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
        print(f"=> interrupted; the jobs keep running on Slurm (cancel them with: scancel {ids})", file=out)
    else:
        for job in jobs:
            job.cancel(check=False)
        print("=> interrupted; the local jobs were cancelled", file=out)
    summary.interrupted += list(runs)


def run_submitit(runs: Sequence[Run], args: Namespace, out: TextIO | None = None) -> Summary:
    """Submit the runs as one job array per attempt, wait for them (unless ``--no_wait``) and report their states."""
    out = out or sys.stdout
    executor = make_executor(args, Path(args.logdir).resolve() / "submitit")
    if args.launcher == "slurm":
        threads = None if args.slurm_gpus_per_job > 0 else args.slurm_cpus_per_job
    else:
        threads = max(1, (os.cpu_count() or 1) // args.cpu_workers)
    summary = Summary()
    todo = [r for r in runs if not r.results.exists()]
    summary.skipped += [r for r in runs if r.results.exists()]
    for attempt in range(1, args.retries + 2):
        if not todo:
            break
        try:
            jobs = executor.map_array(job_entry, todo, [threads] * len(todo), [attempt] * len(todo))
        except Exception as e:  # submission itself failed (no sbatch, refused partition, ...)
            summary.failed += [(r, f"submission failed: {e}") for r in todo]
            return summary
        print(f"=> submitted {len(jobs)} job(s) (attempt {attempt}): {jobs[0].job_id} ...", file=out, flush=True)
        if args.no_wait:
            summary.submitted += [(r, j.job_id) for r, j in zip(todo, jobs, strict=True)]
            return summary
        retry: list[Run] = []
        for index, (run, job) in enumerate(zip(todo, jobs, strict=True)):
            try:
                outcome: JobOutcome = job.result()
            except KeyboardInterrupt:
                _interrupt_jobs(args, todo[index:], jobs[index:], summary, out)
                return summary
            except Exception as e:  # the job died: timeout, preemption, out of memory
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                outcome = JobOutcome("failed", f"job {job.job_id} {job.state}: {reason}")
            print(f"=> job {job.job_id} {run.name}: {job.state}, {outcome.state}", file=out, flush=True)
            if outcome.state == "done":
                summary.done.append(run)
            elif outcome.state in ("skipped", "busy"):
                summary.skipped.append(run)
            elif attempt <= args.retries:
                retry.append(run)
            else:
                summary.failed.append((run, outcome.detail))
        todo = retry
    return summary


# ----------------------------------------------------------------------------------------------- entry point


def confirm(count: int) -> bool:
    """Ask before starting, as the reference does, but only when someone can answer."""
    if not sys.stdin.isatty():
        return True
    try:
        answer = input(f"=> start {count} run(s)? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def check_unique(runs: Sequence[Run]) -> None:
    if len({r.name for r in runs}) != len(runs):
        raise UserError("the grid repeats a run (duplicate values in a flag?); remove the duplicates")


def execute(runs: Sequence[Run], args: Namespace, probe: GpuProbe, command: CommandBuilder) -> Summary:
    """Run ``runs`` with ``--launcher``: the local scheduler, or a submitit job array."""
    if args.launcher != "local":
        return run_submitit(runs, args)
    return LocalScheduler(
        runs,
        probe=probe,
        command=command,
        max_per_gpu=args.max_per_gpu,
        cpu_workers=args.cpu_workers,
        coldsecs=args.coldsecs,
        waitsecs=args.waitsecs,
        retries=args.retries,
    ).run()


def print_runs(runs: Iterable[Run], command: CommandBuilder) -> None:
    for run in runs:
        status = "done" if run.results.exists() else "todo"
        print(f"[{status}] {run.name}: {shlex.join(command(run, None))}")


def _config_text(config: Config) -> str:
    return f"kappa {_number(config[0])}, lambd {_number(config[1])}, ada_t0 {config[2]}"


def run_tuned(
    args: Namespace, phase1: Sequence[Run], grid: Sequence[Run], probe: GpuProbe, command: CommandBuilder
) -> int:
    """``--tune validation``: phase 1 (AdaB²N's configurations on the validation split), the selection, then
    phase 2 (the test grid with each column's chosen configuration); returns the exit code.

    A column whose validation runs did not all finish gets no AdaB²N runs in phase 2, the other runs still go
    ahead, and the exit code is 1 with one error line per such column; rerunning the command retries them."""
    selection = select_from_validation(phase1)
    phase2 = expand_test(args, selection.chosen)
    later: dict[GridKey, list[Run]] = {}
    for run in grid:
        key = (run.dataset, run.model, run.buffer_size)
        if norm_of(run.method) == ADAPTIVE_NORM and key not in selection.chosen:
            later.setdefault(key, []).append(run)
    n_later = sum(len({(r.seed, r.method) for r in runs}) for runs in later.values())
    done1 = sum(r.results.exists() for r in phase1)
    done2 = sum(r.results.exists() for r in phase2)
    seeds = " ".join(map(str, args.tune_seeds))
    todo1 = len(phase1) - done1
    print(f"=> phase 1: {len(phase1)} AdaB2N validation run(s) (seeds {seeds}): {done1} already done, {todo1} to run")
    pending = f", {n_later} more once the validation runs have chosen their configuration" if n_later else ""
    print(f"=> phase 2: {len(phase2)} test run(s): {done2} already done, {len(phase2) - done2} to run{pending}")
    if args.dry_run:
        print("=> phase 1 (validation split):")
        print_runs(phase1, command)
        print("=> phase 2 (test):")
        print_runs(phase2, command)
        for key, runs in later.items():
            methods = ", ".join(dict.fromkeys(r.method for r in runs))
            n_seeds = len({r.seed for r in runs})
            what = f"{column_label(key)} {methods} x {n_seeds} seed(s)"
            print(f"[later] {what}: (config chosen after the validation runs)")
        print(f"=> {len(phase1)} validation run(s) + {len(phase2) + n_later} test run(s)")
        return 0
    todo = todo1 + len(phase2) - done2 + n_later
    if not args.yes and todo and not confirm(todo):
        print("=> nothing started")
        return 1
    first = execute(phase1, args, probe, command) if phase1 else Summary()
    print(first.format("phase 1 (validation) summary"), flush=True)
    if first.interrupted:
        return first.exit_code
    if first.submitted:
        print(
            "=> phase 2 (the test runs) is expanded from the validation results: run the same command again once "
            "the validation jobs have finished"
        )
        return 0
    selection = select_from_validation(phase1)
    for key, config in selection.chosen.items():
        accuracy = f"mean validation class-IL accuracy {selection.accuracy[key]:.2f}%"
        print(f"=> {column_label(key)}: AdaB2N runs {_config_text(config)} ({accuracy})")
    phase2 = expand_test(args, selection.chosen)
    second = execute(phase2, args, probe, command) if phase2 else Summary()
    print(second.format("phase 2 (test) summary"), flush=True)
    for key, reasons in selection.missing.items():
        message = (
            f"error: no AdaB2N configuration for {column_label(key)}, so its AdaB2N runs were not started: "
            f"validation run(s) without results: {'; '.join(reasons)}; fix them and run the same command again"
        )
        print(message, file=sys.stderr)
    if second.interrupted:
        return second.exit_code
    return 1 if first.failed or second.failed or selection.missing else 0


def main(
    argv: Sequence[str] | None = None, *, probe: GpuProbe = nvml_probe, command: CommandBuilder = default_command
) -> int:
    """``run.py``: expand, validate, then run the grid (or only report); returns the exit code."""
    try:
        args = parse_launcher_args(argv)
        if args.report:
            from utils import report

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
    done = [r for r in runs if r.results.exists()]
    print(f"=> {len(runs)} run(s) in the grid: {len(done)} already done, {len(runs) - len(done)} to run", flush=True)
    if args.dry_run:
        print_runs(runs, command)
        print(f"=> {len(runs)} run(s)")
        return 0
    if not args.yes and len(done) < len(runs) and not confirm(len(runs) - len(done)):
        print("=> nothing started")
        return 1
    summary = execute(runs, args, probe, command)
    print(summary.format(), flush=True)
    return summary.exit_code
