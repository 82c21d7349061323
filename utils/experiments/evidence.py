"""What a reader asks of a gain before believing it: does the selection rule make it, and could the design see it?

* **Selection** (per column): AdaB²N's gain over BN for the configuration that is best on the test runs themselves
  (what picking from a grid of test results does: optimistic) against the configuration chosen on the validation
  runs (``run.py --tune validation``, the report's default), when every configuration also ran as a test run.
* **Power** (pooled over columns): each method's ``method − BN`` differences paired by seed, pooled over every
  column, as one mean with its 95 % confidence interval (Student's t) and the smallest true gain this number of
  pairs would detect with 80 % power in a two-sided 5 % paired t-test, ``(t_0.975 + t_0.8) · s / √n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from normcl.utils.experiments.methods import BASELINE, Config
from normcl.utils.experiments.records import Stat
from normcl.utils.experiments.selection import best_config
from normcl.utils.experiments.tables import ON_TEST, Column, Entry, Gain, Report, gain_of, paired_diffs

POWER = 0.8
ALPHA = 0.05


@dataclass(frozen=True)
class Selection:
    """One column's gain over BN two ways: the configuration best on test, and the validation choice."""

    method: str
    column: Column
    configurations: int
    best_on_test: Config | None
    best_gain: Gain | None
    chosen: Config | None
    chosen_gain: Gain | None


def selections(report: Report) -> list[Selection]:
    """Every AdaB²N-family cell whose configurations (more than one) all have test runs besides validation runs."""
    out = []
    for (method, column), configs in sorted(report.test_sensitivity.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = report.entries.get((BASELINE, column))
        configs = on_common_seeds(configs)
        if len(configs) < 2 or base is None or base.on_validation:
            continue
        best = best_config({c: e.runs + e.diverged for c, e in configs.items()})
        chosen = report.entries[(method, column)].config
        best_gain = gain_of(configs[best], base) if best in configs else None
        chosen_gain = gain_of(configs[chosen], base) if chosen in configs else None
        out.append(Selection(method, column, len(configs), best, best_gain, chosen, chosen_gain))
    return out


def on_common_seeds(configs: dict[Config, Entry]) -> dict[Config, Entry]:
    """The configurations' test runs on the seeds that every configuration has run (diverged runs count as run),
    so that a partly run grid compares like with like; none when no seed is common to all."""
    seeds = [{r.seed for r in e.runs + e.diverged} for e in configs.values()]
    common = set.intersection(*seeds) if seeds else set()
    if not common:
        return {}
    return {c: Entry.of([r for r in e.runs + e.diverged if r.seed in common], c) for c, e in configs.items()}


@dataclass(frozen=True)
class Pooled:
    """``method − BN`` over every (column, seed) pair: mean, 95 % interval, smallest detectable gain."""

    method: str
    columns: int
    diff: Stat
    low: float | None
    high: float | None
    detectable: float | None


def pooled(report: Report, method: str, metric: str = "class_il") -> Pooled | None:
    """The method's report cells against BN's in ``metric`` (a :class:`Record` field), pooled over columns; a cell
    whose configuration was picked on its own test runs among several is left out (its gain is optimistic by
    construction)."""
    diffs: list[float] = []
    columns = 0
    for column in report.columns:
        entry, base = report.entries.get((method, column)), report.entries.get((BASELINE, column))
        if entry is None or base is None or entry.on_validation or base.on_validation:
            continue
        if entry.selected_on == ON_TEST and len(report.sensitivity.get((method, column), {})) > 1:
            continue
        pairs = paired_diffs(entry.runs, base.runs, metric)
        columns += bool(pairs)
        diffs += pairs
    if not diffs:
        return None
    diff = Stat.of(diffs)
    if diff.std is None or diff.mean is None:
        return Pooled(method, columns, diff, None, None, None)
    se, df = diff.std / math.sqrt(diff.n), diff.n - 1
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    detectable = (float(stats.t.ppf(1 - ALPHA / 2, df)) + float(stats.t.ppf(POWER, df))) * se
    return Pooled(method, columns, diff, diff.mean - half, diff.mean + half, detectable)


def _config_text(config: Config | None) -> str:
    return "–" if config is None else f"κ {config[0]:g}, λ {config[1]:g}, t0 {config[2]}"


def _gain_text(gain: Gain | None) -> str:
    return (gain.text() if gain is not None else "") or "–"


def markdown(report: Report) -> list[str]:
    """The two tables, when their runs exist."""
    out: list[str] = []
    rows = selections(report)
    if rows:
        out += [
            f"## Gain over {BASELINE}: the configuration best on test against the validation choice",
            "",
            "Class-IL points, mean ± std over seeds of the paired difference (seeds; on how many ahead). *Best on "
            "test*: the configuration whose test runs score best, chosen on the very numbers it reports (what a "
            "grid of test results invites; optimistic). *Validation choice*: chosen on `--validation 1` runs, as "
            "every other table here. Both on the seeds that every configuration of the column has run, so a "
            "partly run grid compares like with like (the gain table above uses all of a cell's seeds).",
            "",
            "| method | column | configurations | best on test | gain | validation choice | gain |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in rows:
            cells = [s.method, s.column.label, str(s.configurations), _config_text(s.best_on_test)]
            cells += [_gain_text(s.best_gain), _config_text(s.chosen), _gain_text(s.chosen_gain)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    power = [p for m in report.methods if m != BASELINE and (p := pooled(report, m)) is not None]
    if power:
        out += [
            f"## Gain over {BASELINE} pooled over columns, paired by seed",
            "",
            f"Every (column, seed) pair of the tables above: mean of (method − {BASELINE}) in class-IL points, its "
            f"95 % confidence interval (Student's t), and the smallest true gain that this "
            f"number of pairs detects with {POWER:.0%} power (two-sided paired t-test at {ALPHA:.0%}). The pairs are "
            "treated as independent, though the columns share seeds (so class orders) and may differ in effect: the "
            "interval is, if anything, too narrow. Cells whose configuration was picked on their own test runs are "
            "left out.",
            "",
            "| method | columns | pairs | mean gain | 95 % interval | detectable gain |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p in power:
            interval = "–" if p.low is None else f"[{p.low:+.2f}, {p.high:+.2f}]"
            detectable = "–" if p.detectable is None else f"{p.detectable:.2f}"
            mean = "–" if p.diff.mean is None else f"{p.diff.mean:+.2f}"
            out.append(f"| {p.method} | {p.columns} | {p.diff.n} | {mean} | {interval} | {detectable} |")
        out.append("")
    return out


def sensitivity_cells(report: Report) -> list[tuple[str, Column, dict[Config, Entry], str]]:
    """Every sensitivity table the report shows: the split the choice was made on, then, where the configurations
    also ran as test runs, those."""
    out = []
    for (m, c), cells in report.sensitivity.items():
        out.append((m, c, cells, report.sensitivity_split[(m, c)]))
        if len(report.test_sensitivity.get((m, c), {})) > 1:
            out.append((m, c, report.test_sensitivity[(m, c)], "test"))
    return sorted(out, key=lambda t: (t[0], t[1], t[3]))
