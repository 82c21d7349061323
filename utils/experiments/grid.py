"""The runs of ``run.py``'s grid: what each one starts, where its results go, and the checks before any starts.

The grid follows the launcher of the AdaB²N reference code (``lvyilin/AdaB2N``, ``run.py``): every combination of
seed, dataset, normalization method, model and buffer size, AdaB²N expanded over its ``kappa × lambd × ada_t0``
search space, each run ``utils/main.py --load_best_args ...`` with its output in ``--logdir/NAME.txt``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import shlex
from argparse import Namespace
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from normcl.datasets import DATASETS
from normcl.models import MODELS
from normcl.models.utils.adab2n_options import ADA_T0, KAPPA, LAMBD
from normcl.utils.args import parse_args
from normcl.utils.best_args import available_combinations, best_args_for
from normcl.utils.core.errors import UserError
from normcl.utils.core.run_files import (
    VALIDATION_SUFFIX,
    lock_file,
    log_file,
    partial_results_file,
    results_file,
    run_name,
)
from normcl.utils.experiments.methods import (
    ADAPTIVE_NORM,
    Config,
    GridKey,
    method_flags,
    method_label,
    norm_of,
    runs_without_affine,
)

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
PAPER_SEARCH: dict[str, tuple[float, ...] | None] = {
    KAPPA.dest: PAPER_KAPPAS,
    LAMBD.dest: None,
    ADA_T0.dest: PAPER_ADA_T0S,
}
"""The paper's values of each option of AdaB²N's configuration (``adab2n_options.SEARCHED``, by name); ``None``:
the dataset's (:func:`adaptive_configs`: ``PAPER_LAMBDAS``, ``PAPER_LAMBDAS_MINIIMG`` for seq-miniimg)."""
USAGE_THRESHOLD = 0.3
USAGE_THRESHOLD_MINIIMG = 0.1
"""The reference waits for a GPU below 10% memory use for Mini-ImageNet, whose runs are the largest."""

BEST_ARGS_FLAG = "--load_best_args"
NO_BEST_ARGS_EXAMPLE = '--no_best_args --extra "--lr 0.03"'
"""How ``run.py`` runs a combination without best args (``--alpha``/``--beta`` too for DER/DER++)."""

ConfigsOf = Callable[[str, str, int | None], Sequence[Config]]
"""The AdaB²N configurations to run in a column (none: the column's AdaB²N runs are left out)."""


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
        return lock_file(self.results)

    @property
    def partial(self) -> Path:
        """Where ``utils/main.py`` leaves the results of the run if its loss becomes NaN or infinite."""
        return partial_results_file(self.results)

    @property
    def diverged(self) -> bool:
        """The run stopped on a non-finite loss (a partial results file, no final one). Same seed, same step: a
        rerun would only diverge again, so it counts as done until someone deletes the partial file."""
        return self.partial.exists() and not self.results.exists()

    @property
    def done(self) -> bool:
        """A run is done when its results file exists or it diverged: what resume, the scheduler and the counts
        all check."""
        return self.results.exists() or self.partial.exists()

    @property
    def key(self) -> GridKey:
        """The run's column."""
        return (self.dataset, self.model, self.buffer_size)

    @property
    def members(self) -> tuple[Run, ...]:
        """The runs that its process trains: itself alone (a ``--stack`` job trains several, :mod:`.stacks`)."""
        return (self,)


def split_extra(extra: str) -> list[str]:
    """``--extra``'s flags, or one line saying why they cannot be split."""
    try:
        return shlex.split(extra)
    except ValueError as e:
        raise UserError(f"--extra {extra!r} cannot be split into flags ({e})") from None


def adaptive_configs(args: Namespace, dataset: str) -> list[Config]:
    """AdaB²N's search space on ``dataset``: ``--kappas × --lambdas × --ada_t0s`` (the paper's lambdas by default)."""
    default_lambdas = PAPER_LAMBDAS_MINIIMG if dataset == "seq-miniimg" else PAPER_LAMBDAS
    lambdas = args.lambdas if args.lambdas is not None else default_lambdas
    return [Config(*c) for c in itertools.product(args.kappas, lambdas, args.ada_t0s)]


def _argv(args: Namespace, run: Run, extra: Sequence[str], results_root: Path) -> list[str]:
    """``utils/main.py``'s flags for ``run`` (the reference's order, ``--extra`` last so that it can override)."""
    buf = "" if run.buffer_size is None else str(run.buffer_size)
    label = method_label(run.method, run.config)
    suffix = VALIDATION_SUFFIX if run.validation else ""
    argv = [] if args.no_best_args else [BEST_ARGS_FLAG]
    argv += ["--seed", str(run.seed), "--dataset", run.dataset, "--model", run.model, *method_flags(run.method)]
    if run.buffer_size is not None:
        argv += ["--buffer_size", str(run.buffer_size)]
    argv += ["--epochs", str(args.epochs), "--bs", str(args.bs), "--buffer_mode", args.buffer_mode]
    if run.config is not None:
        argv += run.config.flags()
    if runs_without_affine(run.method):
        argv += ["--no_affine", "1"]
    if run.validation:
        argv += ["--validation", "1"]
    argv += ["--run_name", run.name, "--results_path", str(results_root)]
    argv += ["--wandb_project", args.wandb_project, "--wandb_name", run.name]
    argv += ["--wandb_group", f"{run.dataset}_{run.model}{buf}_{label}{suffix}"]
    if args.nowand:
        argv += ["--nowand", "1"]
    return argv + list(extra)


def _expand(
    args: Namespace, seeds: Iterable[int], methods: Sequence[str], configs_of: ConfigsOf, validation: bool = False
) -> list[Run]:
    """The runs of ``seeds × datasets × methods × models × buffers`` (the reference's order), each AdaB²N method
    with ``configs_of``'s configurations; ``validation`` runs get ``--validation 1`` and a ``_val`` suffix on their
    run, results and wandb names so that they never collide with the test runs of the same configuration."""
    results_root = Path(args.results_path).resolve()
    logdir = Path(args.logdir).resolve()
    extra = split_extra(args.extra)
    suffix = VALIDATION_SUFFIX if validation else ""
    runs: list[Run] = []
    for seed, dataset, method, model in itertools.product(seeds, args.datasets, methods, args.models):
        uses_buffer = MODELS.get(model).USES_BUFFER
        buffers: Sequence[int | None] = (args.buffer_sizes or PAPER_BUFFERS[dataset]) if uses_buffer else [None]
        setting = DATASETS.get(dataset).SETTING
        threshold = args.usage_threshold
        if threshold is None:
            threshold = USAGE_THRESHOLD_MINIIMG if dataset == "seq-miniimg" else USAGE_THRESHOLD
        for buffer in buffers:
            adaptive = norm_of(method) == ADAPTIVE_NORM
            configs: Sequence[Config | None] = configs_of(dataset, model, buffer) if adaptive else [None]
            for config in configs:
                label = method_label(method, config)
                name = run_name(dataset, args.epochs, model, buffer, label, seed, args.buffer_mode) + suffix
                spec = Namespace(
                    results_path=results_root, setting=setting, dataset=dataset, model=model, run_name=name
                )
                run = Run(
                    name=name,
                    dataset=dataset,
                    model=model,
                    buffer_size=buffer,
                    method=method,
                    seed=seed,
                    argv=(),
                    results=results_file(spec),
                    log=log_file(logdir, name),
                    usage_threshold=threshold,
                    interpreter=args.interpreter,
                    workdir=Path.cwd(),
                    config=config,
                    validation=validation,
                )
                runs.append(replace(run, argv=tuple(_argv(args, run, extra, results_root))))
    return runs


def expand_grid(args: Namespace) -> list[Run]:
    """Every run of the grid, in the reference's order (seed, dataset, method, model, buffer, AdaB²N config)."""
    return _expand(args, range(args.num_seeds), args.methods, lambda dataset, *_: adaptive_configs(args, dataset))


def expand_validation(args: Namespace) -> list[Run]:
    """Phase 1 of ``--tune validation``: plain AdaB²N, every configuration, on the validation split, for the
    ``--tune_seeds`` only. Its pseudo-methods (``AdaB2N-renorm``) reuse its choice instead of a search of their own,
    so phase 1 runs AdaB²N whenever any method of its family is in ``--methods``."""
    tuned = any(norm_of(m) == ADAPTIVE_NORM for m in args.methods)
    methods = [ADAPTIVE_NORM] if tuned else []
    return _expand(args, args.tune_seeds, methods, lambda dataset, *_: adaptive_configs(args, dataset), True)


def expand_test(args: Namespace, chosen: dict[GridKey, Config]) -> list[Run]:
    """Phase 2 of ``--tune validation``: the test grid, each AdaB²N-family method only at its column's ``chosen``
    configuration (plain tuples too); a column without a choice has no AdaB²N runs (yet)."""

    def configs_of(dataset: str, model: str, buffer: int | None) -> list[Config]:
        config = chosen.get((dataset, model, buffer))
        return [] if config is None else [Config(*config)]

    return _expand(args, range(args.num_seeds), args.methods, configs_of)


def check_unique(runs: Sequence[Run]) -> None:
    """Two runs of one name would share a results file: the second would be skipped as done."""
    if len({r.name for r in runs}) != len(runs):
        raise UserError("the grid repeats a run (duplicate values in a flag?); remove the duplicates")


def check_best_args(runs: Sequence[Run]) -> None:
    """Every run that loads the best args has some, else one line in ``run.py``'s own flags: ``utils/main.py``'s
    error would say to change ``--buffer_size`` or to drop ``--load_best_args``, which the grid sets itself."""
    tuned = available_combinations()
    for dataset, model, buffer in dict.fromkeys(r.key for r in runs if BEST_ARGS_FLAG in r.argv):
        try:
            best_args_for(dataset, model, buffer)
        except UserError:
            sizes = [str(b) for d, m, b in tuned if (d, m) == (dataset, model)]
            where = f"'{model}' on '{dataset}'" + ("" if buffer is None else f" with buffer size {buffer}")
            instead = f"choose --buffer_sizes among {', '.join(sizes)}, or " if sizes and buffer is not None else ""
            raise UserError(
                f"no best args for {where}; {instead}give the runs their hyper-parameters yourself: "
                f"{NO_BEST_ARGS_EXAMPLE}"
            ) from None


def validate_runs(runs: Sequence[Run]) -> None:
    """Check the best args, then parse each distinct configuration with ``utils/main.py``'s own parser, so that a
    grid whose runs would all fail (a misspelt ``--extra`` flag) stops here with one line instead."""
    check_best_args(runs)
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
            reason = lines[-1].removeprefix("error: ") if lines else "invalid arguments"
            raise UserError(f"run {run.name} would fail: {reason} (check --extra)") from None
