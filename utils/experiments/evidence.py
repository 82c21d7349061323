"""Does the selection rule make a gain? Per column, AdaB²N's gain over BN for the configuration that is best on the
test runs themselves (what picking from a grid of test results does: optimistic) against the configuration chosen on
the validation runs (``run.py --tune validation``, the report's default), when every configuration also ran as a test
run; and the sensitivity tables' cells. The gains pooled over columns, at the seed level, are :mod:`.gains`'.
"""

from __future__ import annotations

from dataclasses import dataclass

from normcl.utils.experiments.gains import comparison
from normcl.utils.experiments.methods import BASELINE, Config
from normcl.utils.experiments.selection import best_config
from normcl.utils.experiments.tables import Column, Entry, Gain, Report, by_seed, gain_of


@dataclass(frozen=True)
class Selection:
    """One column's gain over BN two ways: the configuration best on test, and the validation choice."""

    method: str
    baseline: str
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
        compared = comparison(report, method)
        baseline = compared.baseline if compared else BASELINE
        base = report.entries.get((baseline, column))
        where = f"{compared.label if compared else f'{method} − {baseline}'} in {column.label}"
        configs = on_common_seeds(configs, where)
        if len(configs) < 2 or base is None or base.on_validation:
            continue
        best = best_config({c: e.runs + e.diverged for c, e in configs.items()})
        chosen = report.entries[(method, column)].config
        best_gain = gain_of(configs[best], base, where) if best in configs else None
        chosen_gain = gain_of(configs[chosen], base, where) if chosen in configs else None
        out.append(Selection(method, baseline, column, len(configs), best, best_gain, chosen, chosen_gain))
    return out


def on_common_seeds(configs: dict[Config, Entry], where: str) -> dict[Config, Entry]:
    """The configurations' test runs on the seeds that every configuration has run (diverged runs count as run),
    so that a partly run grid compares like with like; none when no seed is common to all. A configuration that ran
    a seed twice is refused (:func:`.tables.by_seed`, naming ``where``): its mean would count the seed twice."""
    seeds = [set(by_seed(e.runs + e.diverged, where)) for e in configs.values()]
    common = set.intersection(*seeds) if seeds else set()
    if not common:
        return {}
    return {c: Entry.of([r for r in e.runs + e.diverged if r.seed in common], c) for c, e in configs.items()}


def _config_text(config: Config | None) -> str:
    return "–" if config is None else f"κ {config[0]:g}, λ {config[1]:g}, t0 {config[2]}"


def _gain_text(gain: Gain | None) -> str:
    return (gain.text() if gain is not None else "") or "–"


def markdown(report: Report) -> list[str]:
    """The selection table, when its runs exist."""
    out: list[str] = []
    rows = selections(report)
    if rows:
        out += [
            "## Gain over BN: the configuration best on test against the validation choice",
            "",
            "Class-IL points, mean ± std over seeds of the difference to the method's BN row (the one of the gain "
            "tables), paired by seed (seeds; on how many ahead). *Best on "
            "test*: the configuration whose test runs score best, chosen on the very numbers it reports (what a "
            "grid of test results invites; optimistic). *Validation choice*: chosen on `--validation 1` runs, as "
            "every other table here. Both on the seeds that every configuration of the column has run, so a "
            "partly run grid compares like with like (the gain table above uses all of a cell's seeds).",
            "",
            "| comparison | column | configurations | best on test | gain | validation choice | gain |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in rows:
            cells = [
                f"{report.label(s.method)} − {report.label(s.baseline)}",
                s.column.label,
                str(s.configurations),
                _config_text(s.best_on_test),
            ]
            cells += [_gain_text(s.best_gain), _config_text(s.chosen), _gain_text(s.chosen_gain)]
            out.append("| " + " | ".join(cells) + " |")
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
