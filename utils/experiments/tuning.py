"""``--tune validation``: AdaB²N's configuration chosen as the paper does, with the report's own rule.

Phase 1 runs AdaB²N's configurations on the validation split (``--validation 1``, names ending in ``_val``) for
``--tune_seeds``; phase 2 the test grid with, for AdaB²N and its pseudo-methods, only each column's choice. A validation
run that diverged (non-finite loss) is done: its configuration is never chosen, and a column whose configurations all
diverged gets no choice.
"""

from __future__ import annotations

import math
import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field

from normcl.utils.core.run_files import PARTIAL_SUFFIX
from normcl.utils.experiments.grid import Run, expand_test
from normcl.utils.experiments.methods import ADAPTIVE_NORM, Config, GridKey, column_label, norm_of
from normcl.utils.experiments.processes import CommandBuilder, Summary, confirm, done_text, print_runs
from normcl.utils.experiments.records import DIVERGED, Record, load_records
from normcl.utils.experiments.scheduler import GpuProbe, execute
from normcl.utils.experiments.selection import best_config, diverged_configs, mean_class_il, validation_candidates
from normcl.utils.experiments.stacks import stack_runs, stacking_text


@dataclass
class Selection:
    """What the validation runs chose: a configuration per column, its mean validation accuracy, for each column
    without a choice yet why (the validation runs without results, with their logs), and per column the
    configurations never chosen because a validation run diverged."""

    chosen: dict[GridKey, Config] = field(default_factory=dict)
    accuracy: dict[GridKey, float] = field(default_factory=dict)
    missing: dict[GridKey, list[str]] = field(default_factory=dict)
    diverged: dict[GridKey, list[Config]] = field(default_factory=dict)

    @property
    def all_diverged(self) -> list[GridKey]:
        """The columns that will never have a choice: every configuration has a diverged validation run."""
        return [key for key in self.diverged if key not in self.chosen]


def _validation_records(phase1: Sequence[Run]) -> tuple[list[Record], list[str]]:
    """The phase-1 runs' own records, and other validation runs of their columns with the same protocol, as the
    report's choice counts them too; with the loader's warnings."""
    wanted = {path for run in phase1 for path in (run.results, run.partial)}
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
    (:mod:`normcl.utils.experiments.selection`), so ``run.py`` runs the configuration that the tables will report. Only
    the phase-1 runs' own results files count as done, and a column is chosen only once all of them exist, final or
    partial (diverged): choosing among the runs that happened to succeed would pick another configuration after
    they are retried."""
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
            if run.results in loaded or run.partial in loaded:
                continue
            if run.done:
                paths = (str(run.results), str(run.partial))
                why = next((w for w in warnings if any(p in w for p in paths)), "unreadable results file")
                reasons.append(f"{run.name} ({why})")
            else:
                reasons.append(f"{run.name} (no results; log {run.log})")
        if reasons:
            selection.missing[key] = reasons
    usable = [r for r in records if r.key not in selection.missing]
    for key, groups in validation_candidates(usable).items():
        if left_out := diverged_configs(groups):
            selection.diverged[key] = left_out
        config = best_config(groups)
        if config is None:
            continue
        selection.chosen[key] = config
        mean = mean_class_il(groups[config])
        selection.accuracy[key] = math.nan if mean is None else mean
    return selection


def _columns_text(columns: dict[GridKey, list[Run]]) -> dict[GridKey, str]:
    """``seq-fmnist er_ace 200 AdaB2N, AdaB2N-renorm x 2 seed(s)``: the AdaB²N runs of each column, in brief."""
    out = {}
    for key, runs in columns.items():
        methods = ", ".join(dict.fromkeys(r.method for r in runs))
        out[key] = f"{column_label(key)} {methods} x {len({r.seed for r in runs})} seed(s)"
    return out


def _dry_run(
    phase1: Sequence[Run],
    phase2: Sequence[Run],
    later: dict[GridKey, list[Run]],
    never: dict[GridKey, list[Run]],
    n_later: int,
    command: CommandBuilder,
    stack: int,
) -> int:
    """``--dry_run``'s listing: both phases (in stacks of ``stack``), the AdaB²N runs that wait for a choice, and
    those that never get one."""
    for title, runs in (("phase 1 (validation split)", phase1), ("phase 2 (test)", phase2)):
        jobs = stack_runs(runs, stack)
        print(f"=> {title}:")
        print_runs(jobs, command)
        if stack > 1:
            print(stacking_text(jobs, stack))
    for text in _columns_text(later).values():
        print(f"[later] {text}: (config chosen after the validation runs)")
    for text in _columns_text(never).values():
        print(f"[{DIVERGED}] {text}: not run, every AdaB2N configuration has a diverged validation run")
    print(f"=> {len(phase1)} validation run(s) + {len(phase2) + n_later} test run(s)")
    return 0


def _no_choice(selection: Selection) -> list[str]:
    """One line per column whose configurations all diverged: nothing to run, and why."""
    return [
        f"warning: no AdaB2N configuration for {column_label(key)}, so its AdaB2N runs are not started: every "
        "configuration has a diverged validation run (non-finite loss); choose other --lambdas or --kappas, or "
        f"delete the {PARTIAL_SUFFIX} files of its validation runs to run them again"
        for key in selection.all_diverged
    ]


def run_tuned(
    args: Namespace, phase1: Sequence[Run], grid: Sequence[Run], probe: GpuProbe, command: CommandBuilder
) -> int:
    """Phase 1 (AdaB²N's configurations on the validation split), the selection, then phase 2 (the test grid with
    each column's chosen configuration); returns the exit code.

    A column whose validation runs did not all finish gets no AdaB²N runs in phase 2, the other runs still go
    ahead, and the exit code is 1 with one error line per such column; rerunning the command retries them. A column
    whose configurations all diverged gets none either, with a warning, but exit code 0: a rerun would diverge
    again."""
    selection = select_from_validation(phase1)
    phase2 = expand_test(args, selection.chosen)
    later: dict[GridKey, list[Run]] = {}
    never: dict[GridKey, list[Run]] = {}
    for run in grid:
        if norm_of(run.method) == ADAPTIVE_NORM and run.key not in selection.chosen:
            (never if run.key in selection.all_diverged else later).setdefault(run.key, []).append(run)
    n_later = sum(len({(r.seed, r.method) for r in runs}) for runs in later.values())
    seeds = " ".join(map(str, args.tune_seeds))
    todo1 = sum(not r.done for r in phase1)
    print(f"=> phase 1: {len(phase1)} AdaB2N validation run(s) (seeds {seeds}): {done_text(phase1)}")
    pending = f", {n_later} more once the validation runs have chosen their configuration" if n_later else ""
    print(f"=> phase 2: {len(phase2)} test run(s): {done_text(phase2)}{pending}")
    if args.dry_run:
        return _dry_run(phase1, phase2, later, never, n_later, command, args.stack)
    todo = todo1 + sum(not r.done for r in phase2) + n_later
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
        left_out = len(selection.diverged.get(key, []))
        never_chosen = f"; {left_out} {DIVERGED} configuration(s) never chosen" if left_out else ""
        print(f"=> {column_label(key)}: AdaB2N runs {config.text()} ({accuracy}{never_chosen})")
    phase2 = expand_test(args, selection.chosen)
    second = execute(phase2, args, probe, command) if phase2 else Summary()
    print(second.format("phase 2 (test) summary"), flush=True)
    for key, reasons in selection.missing.items():
        message = (
            f"error: no AdaB2N configuration for {column_label(key)}, so its AdaB2N runs were not started: "
            f"validation run(s) without results: {'; '.join(reasons)}; fix them and run the same command again"
        )
        print(message, file=sys.stderr)
    for line in _no_choice(selection):
        print(line, file=sys.stderr)
    if second.interrupted:
        return second.exit_code
    return 1 if first.failed or second.failed or selection.missing else 0
