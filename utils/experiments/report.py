"""The paper's tables and plots from a folder of results JSON files: ``normcl-report RESULTS_DIR``.

Rows are normalization methods, columns dataset × model × buffer size; a cell is the mean ± sample standard
deviation over seeds of the final class-IL accuracy, task-IL accuracy and forgetting, with the number of seeds.
Below them, each method's class-IL gain over BN paired by seed (a seed fixes class order and initialisation, so
the paired spread is the one that decides whether a gain is real) and, for ``--diagnose_norm 1`` runs, the running
statistics' distances to the task-balanced and to the latest task's statistics after the last task.
A run's method comes from its arguments (``nl``, an explicit ``forward_mode``, ``adab2n_renorm``), so results of
any launcher — not only ``run.py`` — are grouped the same way.

AdaB²N is a family of configurations ``(kappa, lambd, ada_t0)``: per column the report picks the configuration
with the best mean class-IL accuracy on the validation split when runs with ``--validation 1`` exist (and reports
the test runs of that configuration), otherwise on the final test accuracy, which the tables then say is
optimistic. A cell with a single configuration and no validation runs chose nothing on the test accuracy: the
table says it is AdaB²N's validation choice (``AdaB2N-renorm`` after ``run.py --tune validation``) or the only
configuration run. The sensitivity tables show every ``kappa × lambd`` configuration.

A run that diverged (``NAME.partial.json``: its loss became NaN or infinite) is in no mean, but every cell counts it
(``(2 + 1 diverged)``, ``diverged (3)`` when all did), its configuration is never chosen, and a section lists where
each diverged run stopped.

Writes ``report.md`` (also printed), ``summary.csv``, ``sensitivity.csv``, ``results.tex`` and PNG plots: average
class-IL accuracy after each task, the accuracy matrix, and — for runs with ``--diagnose_norm 1`` — the distance of
the running statistics to the task-balanced and to the latest task's statistics after each task; for runs with
``--eval_every``, AAA, end-ACC, min-ACC and WC-ACC tables and each task's accuracy along the stream
(``utils/experiments/anytime.py``).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from normcl.utils.core.atomic import atomic_write_bytes
from normcl.utils.core.commands import CommandParser
from normcl.utils.core.errors import UserError
from normcl.utils.experiments import results_page, rounding
from normcl.utils.experiments.anytime import plot_stream
from normcl.utils.experiments.formats import latex, markdown, write_csv, write_sensitivity_csv
from normcl.utils.experiments.gains import METRIC_NAMES, Primary
from normcl.utils.experiments.methods import is_method
from normcl.utils.experiments.plots import plot_column
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.tables import build_report


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote, and the Markdown it printed."""

    markdown: Path
    csv: Path
    sensitivity_csv: Path
    latex: Path
    plots: list[Path]
    text: str


def write_report(
    root: Path,
    out_dir: Path | None = None,
    plots: bool = True,
    primary: Primary | None = None,
    seeds: Sequence[int] | None = None,
) -> ReportFiles:
    """Load ``root``'s results, write every table and plot into ``out_dir`` (default ``root/report``); ``primary``:
    the declared primary endpoint, reported on its own; ``seeds``: only the runs of these seeds (a replication on
    seeds that an earlier reading had not seen), which the header names."""
    out_dir = out_dir or root / "report"
    records, warnings = load_records(root)
    if not records:
        skipped = f" ({len(warnings)} file(s) skipped, the first: {warnings[0]})" if warnings else ""
        raise UserError(f"no runs in {root}{skipped}; pass the --results_path of the runs")
    header = f"Results in {root}"
    if seeds is not None:
        chosen = set(seeds)
        missing = sorted(chosen - {r.seed for r in records})
        if missing:
            raise UserError(
                f"no runs of seed(s) {', '.join(map(str, missing))} in {root}; pass seeds that its runs have (--seeds)"
            )
        records = [r for r in records if r.seed in chosen]
        header += f", the runs of seeds {', '.join(map(str, sorted(chosen)))} only"
    report = build_report(records)
    report.warnings = warnings
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(report, header, primary)
    files = ReportFiles(
        markdown=out_dir / "report.md",
        csv=out_dir / "summary.csv",
        sensitivity_csv=out_dir / "sensitivity.csv",
        latex=out_dir / "results.tex",
        plots=[],
        text=text,
    )
    atomic_write_bytes(files.markdown, text.encode())
    write_csv(report, files.csv)
    write_sensitivity_csv(report, files.sensitivity_csv)
    atomic_write_bytes(files.latex, latex(report).encode())
    if plots:
        for column in report.columns:
            files.plots += plot_column(report, column, out_dir) + plot_stream(report, column, out_dir)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """``normcl-report``, ``python -m utils.report`` (and ``run.py --report``): write the report and print its
    Markdown; with ``--page``, also rewrite a results page's generated part from it (as ``python -m
    utils.results_page``). Exit code 2 for bad input, a folder without runs among it."""
    p = CommandParser("normcl-report", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path, help="folder searched recursively for results JSON files")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    p.add_argument(
        "--primary",
        nargs=3,
        metavar=("METHOD", "BASELINE", "METRIC"),
        help="the primary endpoint, declared before the runs: METHOD − BASELINE (report rows, e.g. AdaB2N BN-joint) "
        f"in METRIC ({', '.join(METRIC_NAMES)}), pooled at the seed level, a diverged run scoring chance; reported "
        "on its own and left out of the exploratory family",
    )
    p.add_argument(
        "--primary_seeds",
        type=int,
        metavar="N",
        help="with --primary: the declared number of seeds; the verdict waits until N seeds have both rows in "
        "every column (default: the seeds present)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="only the runs of these seeds, e.g. a replication on seeds an earlier reading had not seen",
    )
    p.add_argument(
        "--reruns_of",
        type=Path,
        metavar="BASE_DIR",
        help="RESULTS_DIR's subfolders rerun some of BASE_DIR's runs under other rounding (another kernel set, "
        "thread count, or the same settings as an identity check): report the rounding noise against the seeds' "
        "spread instead of the tables (utils/experiments/rounding.py)",
    )
    g = p.add_argument_group("results page (scripts/reproduce_fmnist.sh; python -m utils.results_page)")
    g.add_argument("--page", type=Path, help="also rewrite this Markdown page's generated part from the report")
    g.add_argument(
        "--command",
        help="with --page: the command that produced the results, one per line (required); the page gives the grid "
        "each run.py line plans",
    )
    g.add_argument("--part", default="", help="with --page: a named part of the page (default: the main)")
    args = p.parse_args(argv)
    if args.page is not None and args.command is None:
        p.error("--page needs --command, the command that produced the results")
    if args.page is None and (args.command is not None or args.part):
        p.error("--command and --part say how to write a results page: add --page PAGE, or leave them out")
    if args.primary and args.primary[2] not in METRIC_NAMES:
        p.error(f"--primary: unknown metric '{args.primary[2]}'; choose one of: {', '.join(METRIC_NAMES)}")
    for name in (args.primary or [])[:2]:
        if not is_method(name):
            p.error(f"--primary: '{name}' is no method (a registered norm, e.g. BN, with -renorm, -joint, -noaffine)")
    if args.primary_seeds is not None and (not args.primary or args.primary_seeds < 1):
        p.error("--primary_seeds takes a positive number of seeds, with --primary")
    if args.seeds is not None:
        given = [flag for flag, value in (("--primary", args.primary), ("--page", args.page)) if value]
        if given:
            p.error(
                f"--seeds reports a subset of the runs, which {' and '.join(given)} would present as the declared "
                "comparison: report the seeds apart (--out DIR), without them"
            )
    if args.reruns_of is not None:
        options = (("--primary", args.primary), ("--no_plots", args.no_plots), ("--seeds", args.seeds))
        given = [flag for flag, value in options if value]
        if given:
            p.error(f"--reruns_of writes the rounding report alone, to which {', '.join(given)} does not apply")
    if not args.results_dir.is_dir():
        print(f"error: {args.results_dir} is not a folder; pass the --results_path of the runs", file=sys.stderr)
        return 2
    if args.reruns_of is not None:
        report_dir = args.out or args.results_dir / "report"
        code = _rounding_report(args.results_dir, args.reruns_of, report_dir)
    else:
        code, report_dir = _report(args)
    if code or args.page is None:
        return code
    page = [f"--command={args.command}", f"--part={args.part}"]
    return results_page.main([str(args.results_dir), str(report_dir), str(args.page), *page])


def _report(args: Namespace) -> tuple[int, Path | None]:
    """The tables and figures of ``args.results_dir``: the exit code and the folder they went to."""
    primary = Primary(*args.primary, seeds=args.primary_seeds) if args.primary else None
    try:
        files = write_report(args.results_dir, args.out, plots=not args.no_plots, primary=primary, seeds=args.seeds)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    print(files.text)
    written = [files.markdown, files.csv, files.sensitivity_csv, files.latex, *files.plots]
    print(f"=> wrote {len(written)} file(s) to {files.markdown.parent}")
    return 0, files.markdown.parent


def _rounding_report(reruns_dir: Path, base_dir: Path, out_dir: Path) -> int:
    """``--reruns_of``: the rounding-noise report, written as ``report.md`` and printed."""
    if not base_dir.is_dir():
        print(
            f"error: --reruns_of {base_dir} is not a folder; pass the --results_path of the base runs", file=sys.stderr
        )
        return 2
    found = rounding.analyse(reruns_dir, base_dir)
    if not found.variants:
        print(
            f"error: no run in a subfolder of {reruns_dir} reruns a run of {base_dir} (matched by run name); pass the "
            "folder whose subfolders hold the reruns",
            file=sys.stderr,
        )
        return 2
    text = rounding.markdown(found, f"Rounding noise: {reruns_dir} against {base_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "report.md", text.encode())
    print(text)
    print(f"=> wrote {out_dir / 'report.md'}")
    return 0
