"""The report's tables as data: the cells (methods × columns), AdaB²N's configuration per cell, the paired gains
over the baseline and the running statistics' drift; :mod:`.formats` writes them out.

Rows are normalization methods, columns dataset × model × buffer size (split further by protocol differences that
must not be averaged together); a cell holds the runs it reports, over seeds, and apart from them the runs that
diverged (non-finite loss), which no mean includes but every table counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from normcl.utils.core.errors import UserError
from normcl.utils.experiments.methods import ADAPTIVE_NORM, DATASET_ORDER, Config, column_label, method_key
from normcl.utils.experiments.records import DIVERGED, Record, Stat
from normcl.utils.experiments.selection import best_config, by_config

DRIFT_KEYS = ("mean_to_balanced", "mean_to_latest", "var_to_balanced", "var_to_latest")
ON_VALIDATION = "validation"
ON_TEST = "final test accuracy"
ON_ADAPTIVE_CHOICE = f"{ADAPTIVE_NORM}'s validation choice"
ON_SINGLE = "only configuration run"
ON_NONE = f"none: every configuration {DIVERGED}"
"""How an AdaB²N-family cell's configuration was chosen: on its validation runs; on the test accuracy it reports
(optimistic); it is the one the AdaB2N cell chose on validation (``run.py --tune validation`` runs AdaB2N-renorm so);
it is the only one run; or not at all, every configuration having diverged."""


@dataclass(frozen=True, order=True)
class Column:
    """dataset × model × buffer, plus any protocol differences that must not be averaged together."""

    dataset_rank: int
    dataset: str
    model: str
    buffer_size: int
    variant: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        base = column_label((self.dataset, self.model, None if self.buffer_size < 0 else self.buffer_size))
        extra = f" [{', '.join(f'{k}={v}' for k, v in self.variant)}]" if self.variant else ""
        return base + extra


@dataclass
class Entry:
    """A table cell: the runs reported for one method in one column (``diverged``: those of them that stopped on a
    non-finite loss, kept apart from the means), and how they were chosen."""

    runs: list[Record]
    config: Config | None = None
    selected_on: str = ""
    on_validation: bool = False
    diverged: list[Record] = field(default_factory=list)

    @classmethod
    def of(cls, records: Sequence[Record], config: Config | None = None, selected_on: str = "") -> Entry:
        """The cell of ``records``, the diverged ones set apart; on the validation split when all of them are."""
        runs = [r for r in records if not r.diverged]
        on_validation = bool(records) and all(r.validation for r in records)
        return cls(runs, config, selected_on, on_validation, [r for r in records if r.diverged])

    def stat(self, metric: str) -> Stat:
        return Stat.of(getattr(r, metric) for r in self.runs)

    def text(self, metric: str) -> str:
        """The cell as the tables print it: ``mean ± std (n)``, ``(n + k diverged)`` when k more runs diverged,
        ``diverged (k)`` when all k did."""
        if self.diverged and not self.runs:
            return f"{DIVERGED} ({len(self.diverged)})"
        return self.stat(metric).text(diverged=len(self.diverged))

    @property
    def seeds(self) -> list[int | None]:
        return sorted({r.seed for r in self.runs}, key=lambda s: -1 if s is None else s)

    @property
    def forward_modes(self) -> tuple[str, ...]:
        """The forward modes the cell's runs recorded (one, unless the cell mixes runs of different models)."""
        return tuple(sorted({r.forward_mode for r in self.runs + self.diverged if r.forward_mode}))


@dataclass
class Report:
    """Every cell, for AdaB²N-family cells every configuration's class-IL accuracy (the sensitivity), and every run
    that diverged."""

    columns: list[Column]
    methods: list[str]
    entries: dict[tuple[str, Column], Entry]
    sensitivity: dict[tuple[str, Column], dict[Config, Entry]] = field(default_factory=dict)
    sensitivity_split: dict[tuple[str, Column], str] = field(default_factory=dict)
    test_sensitivity: dict[tuple[str, Column], dict[Config, Entry]] = field(default_factory=dict)
    """Where the configuration was chosen on validation runs: every configuration that also has test runs."""
    warnings: list[str] = field(default_factory=list)
    diverged: list[Record] = field(default_factory=list)

    def forward_modes(self, method: str) -> tuple[str, ...]:
        """The forward modes of the method's runs in every column."""
        return tuple(sorted({m for (m2, _), e in self.entries.items() if m2 == method for m in e.forward_modes}))

    def label(self, method: str) -> str:
        """The method as every table and figure names it: with its forward mode, part of its identity (``BN
        (separate)``, ``BN (joint)`` for the ``BN-joint`` pseudo-method, ``AdaB2N (joint)``)."""
        modes = self.forward_modes(method)
        if not modes:
            return method
        name = method.removesuffix(f"-{modes[0]}") if len(modes) == 1 else method
        return f"{name} ({'/'.join(modes)})"


def _columns(records: Sequence[Record]) -> dict[Record, Column]:
    """Column of each record; protocol fields that vary inside one dataset × model × buffer split it further."""
    groups: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.model, -1 if r.buffer_size is None else r.buffer_size)].append(r)
    varying = {
        field
        for runs in groups.values()
        for i, (field, _) in enumerate(runs[0].protocol)
        if len({r.protocol[i][1] for r in runs}) > 1
    }
    out = {}
    for (dataset, model, buffer), runs in groups.items():
        rank = DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER)
        for r in runs:
            variant = tuple((k, str(v)) for k, v in r.protocol if k in varying)
            out[r] = Column(rank, dataset, model, buffer, variant)
    return out


def build_report(records: Sequence[Record]) -> Report:
    """Group the records into the paper's table; for AdaB²N pick each column's best configuration: on its
    validation runs when there are any (reporting the test runs of that configuration), else on the test runs;
    never one with a diverged run, and none when all diverged. A column that ran one configuration on the test
    protocol alone (fixed beforehand, as the stream grid's) reports it, its diverged runs counted."""
    column_of = _columns(records)
    cells: dict[tuple[str, Column], list[Record]] = defaultdict(list)
    for r in records:
        cells[(r.method, column_of[r])].append(r)
    columns = sorted(set(column_of.values()))
    methods = sorted({m for m, _ in cells}, key=method_key)
    report = Report(columns, methods, {}, diverged=[r for r in records if r.diverged])
    for key, runs in cells.items():
        test = [r for r in runs if not r.validation]
        val = [r for r in runs if r.validation]
        if runs[0].config is None:
            report.entries[key] = Entry.of(test or val)
            continue
        groups = by_config(val or test)
        fixed = not val and len(groups) == 1  # one configuration, fixed beforehand: nothing is chosen (ON_SINGLE)
        best = next(iter(groups)) if fixed else best_config(groups)  # fixed: its diverged runs counted in its cell
        reported = [r for r in test if r.config == best] or [r for r in val if r.config == best]
        if best is None:  # every configuration diverged: the cell counts the runs the choice had
            reported = val or test
        selected_on = ON_NONE if best is None else ON_VALIDATION if val else ON_TEST
        report.entries[key] = Entry.of(reported, best, selected_on)
        report.sensitivity[key] = {c: Entry.of(rs, c) for c, rs in groups.items()}
        report.sensitivity_split[key] = "validation" if val else "test"
        if val and test:
            report.test_sensitivity[key] = {c: Entry.of(rs, c) for c, rs in by_config(test).items()}
    for (method, column), entry in report.entries.items():
        if entry.selected_on != ON_TEST or len(report.sensitivity[(method, column)]) > 1:
            continue  # only the fixed configurations above: nothing was chosen on the test accuracy
        base = report.entries.get((ADAPTIVE_NORM, column))
        inherited = base is not None and base.selected_on == ON_VALIDATION and base.config == entry.config
        entry.selected_on = ON_ADAPTIVE_CHOICE if method != ADAPTIVE_NORM and inherited else ON_SINGLE
    return report


@dataclass(frozen=True)
class Gain:
    """A method's lead over the baseline on the same seeds (same class order, same initialisation); ``diverged``:
    the method's runs that diverged, so paired with nothing."""

    diff: Stat
    ahead: int
    diverged: int = 0

    def text(self) -> str:
        """``+mean ± std (n; ahead on k; d diverged)``; empty without a mean."""
        if self.diff.mean is None:
            return ""
        spread = "" if self.diff.std is None else f" ± {self.diff.std:.2f}"
        more = f"; {self.diverged} {DIVERGED}" if self.diverged else ""
        return f"{self.diff.mean:+.2f}{spread} ({self.diff.n}; ahead on {self.ahead}{more})"


def by_seed(runs: Sequence[Record], where: str) -> dict[int, Record]:
    """Runs by seed, refusing what pairing by seed cannot hold: two runs of one seed or a run without one (``where``
    names the comparison and the column in the one-line refusal)."""
    out: dict[int, Record] = {}
    for run in runs:
        if run.seed is None or run.seed in out:
            problem = "has no seed" if run.seed is None else f"repeats seed {run.seed} of {out[run.seed].path}"
            raise UserError(
                f"{run.path} {problem}: {where} pairs runs by seed, one run per seed and method in a column; move "
                "reruns to a folder of their own (utils.report --reruns_of)"
            )
        out[run.seed] = run
    return out


def paired_diffs(entry: Entry, base: Entry, where: str, metric: str = "class_il") -> list[float]:
    """``run − baseline`` for every seed both cells ran and neither diverged (a seed fixes class order and
    initialisation); refuses a cell that holds a seed twice (:func:`by_seed`)."""
    base_of = {seed: getattr(r, metric) for seed, r in by_seed(base.runs + base.diverged, where).items()}
    runs = by_seed(entry.runs + entry.diverged, where)
    values = [(getattr(r, metric), base_of.get(seed)) for seed, r in runs.items()]
    return [value - ref for value, ref in values if value is not None and ref is not None]


def gain_of(entry: Entry, base: Entry, where: str, metric: str = "class_il") -> Gain | None:
    """Mean ± std over seeds of ``entry − base`` paired by seed, and on how many seeds the entry led."""
    diffs = paired_diffs(entry, base, where, metric)
    return Gain(Stat.of(diffs), sum(d > 0 for d in diffs), len(entry.diverged)) if diffs else None


def final_drift(entry: Entry) -> dict[str, Stat]:
    """The running statistics' distances after the last task (``DRIFT_KEYS``), over the cell's seeds."""
    last = [r.drift[-1] for r in entry.runs if r.drift and len(r.drift) == len(r.matrix)]
    return {k: Stat.of(d.get(k) for d in last) for k in DRIFT_KEYS}
