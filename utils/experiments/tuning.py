"""``--tune validation``: AdaB²N's configuration chosen as the paper does, with the report's own rule.

Phase 1 runs AdaB²N's configurations on the validation split (``--validation 1``, names ending in ``_val``) for
``--tune_seeds``; phase 2 the test grid with, for AdaB²N and its pseudo-methods, only each column's choice.
"""

from __future__ import annotations

import math
import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field

from utils.experiments.grid import Run, expand_test
from utils.experiments.methods import ADAPTIVE_NORM, Config, GridKey, column_label, norm_of
from utils.experiments.processes import CommandBuilder, Summary, confirm, print_runs
from utils.experiments.records import Record, load_records
from utils.experiments.scheduler import GpuProbe, execute
from utils.experiments.selection import best_config, mean_class_il, validation_candidates


@dataclass
class Selection:
    """What the validation runs chose: a configuration per column, its mean validation accuracy, and for each
    column without a choice why (the validation runs without results, with their logs)."""

    chosen: dict[GridKey, Config] = field(default_factory=dict)
    accuracy: dict[GridKey, float] = field(default_factory=dict)
    missing: dict[GridKey, list[str]] = field(default_factory=dict)


def _validation_records(phase1: Sequence[Run]) -> tuple[list[Record], list[str]]:
    """The phase-1 runs' own records, and other validation runs of their columns with the same protocol, as the
    report's choice counts them too; with the loader's warnings."""
    wanted = {run.results for run in phase1}
    records: list[Record] = []
    warnings: list[str] = []
    for root in sorted({run.results.parent for run in phase1}):
        found, notes = load_records(root) if root.is_dir() else ([], [])
        ours = [r for r in found if r.path in wanted]
        protocol = {r.key: r.protocol for r in ours}
        others = [r for r in found if r.path not in wanted and r.validation and protocol.get(r.key) == r.protocol]
        records += ours + others
        warnings += notes
    return records, warnings


def select_from_validation(phase1: Sequence[Run]) -> Selection:
    """Choose each column's AdaB²N configuration from its phase-1 results with the report's loader and rule
    (:mod:`utils.experiments.selection`), so ``run.py`` runs the configuration that the tables will report. Only
    the phase-1 runs' own results files count as done, and a column is chosen only once all of them exist: choosing
    among the runs that happened to succeed would pick another configuration after they are retried."""
    selection = Selection()
    if not phase1:
        return selection
    records, warnings = _validation_records(phase1)
    loaded = {r.path for r in records}
    columns: dict[GridKey, list[Run]] = {}
    for run in phase1:
        columns.setdefault(run.key, []).append(run)
    for key, runs in columns.items():
        reasons = []
        for run in runs:
            if run.results in loaded:
                continue
            if run.done:
                why = next((w for w in warnings if str(run.results) in w), "unreadable results file")
                reasons.append(f"{run.name} ({why})")
            else:
                reasons.append(f"{run.name} (no results; log {run.log})")
        if reasons:
            selection.missing[key] = reasons
    usable = [r for r in records if r.key not in selection.missing]
    for key, groups in validation_candidates(usable).items():
        config = best_config(groups)
        selection.chosen[key] = config
        mean = mean_class_il(groups[config])
        selection.accuracy[key] = math.nan if mean is None else mean
    return selection


def _dry_run(
    phase1: Sequence[Run], phase2: Sequence[Run], later: dict[GridKey, list[Run]], n_later: int, command: CommandBuilder
) -> int:
    """``--dry_run``'s listing: both phases, and the AdaB²N runs that wait for a choice."""
    print("=> phase 1 (validation split):")
    print_runs(phase1, command)
    print("=> phase 2 (test):")
    print_runs(phase2, command)
    for key, runs in later.items():
        methods = ", ".join(dict.fromkeys(r.method for r in runs))
        n_seeds = len({r.seed for r in runs})
        print(f"[later] {column_label(key)} {methods} x {n_seeds} seed(s): (config chosen after the validation runs)")
    print(f"=> {len(phase1)} validation run(s) + {len(phase2) + n_later} test run(s)")
    return 0


def run_tuned(
    args: Namespace, phase1: Sequence[Run], grid: Sequence[Run], probe: GpuProbe, command: CommandBuilder
) -> int:
    """Phase 1 (AdaB²N's configurations on the validation split), the selection, then phase 2 (the test grid with
    each column's chosen configuration); returns the exit code.

    A column whose validation runs did not all finish gets no AdaB²N runs in phase 2, the other runs still go
    ahead, and the exit code is 1 with one error line per such column; rerunning the command retries them."""
    selection = select_from_validation(phase1)
    phase2 = expand_test(args, selection.chosen)
    later: dict[GridKey, list[Run]] = {}
    for run in grid:
        if norm_of(run.method) == ADAPTIVE_NORM and run.key not in selection.chosen:
            later.setdefault(run.key, []).append(run)
    n_later = sum(len({(r.seed, r.method) for r in runs}) for runs in later.values())
    done1 = sum(r.done for r in phase1)
    done2 = sum(r.done for r in phase2)
    seeds = " ".join(map(str, args.tune_seeds))
    todo1 = len(phase1) - done1
    print(f"=> phase 1: {len(phase1)} AdaB2N validation run(s) (seeds {seeds}): {done1} already done, {todo1} to run")
    pending = f", {n_later} more once the validation runs have chosen their configuration" if n_later else ""
    print(f"=> phase 2: {len(phase2)} test run(s): {done2} already done, {len(phase2) - done2} to run{pending}")
    if args.dry_run:
        return _dry_run(phase1, phase2, later, n_later, command)
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
        print(f"=> {column_label(key)}: AdaB2N runs {config.text()} ({accuracy})")
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
