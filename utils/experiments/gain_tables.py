"""The gains over BatchNorm as Markdown (:mod:`.gains` computes them): the declared primary endpoint on its own, one
table per metric of each comparison's paired gain per column, and the pooled table with Holm's adjustment across its
rows, each with one-line warnings where a comparison differs in more than the norm or pools runs of different code or
machines.
"""

from __future__ import annotations

from collections.abc import Sequence

from normcl.utils.experiments import inference
from normcl.utils.experiments.gains import (
    INTERIM,
    METRIC_NAMES,
    METRICS,
    STREAM_METRICS,
    Comparison,
    Primary,
    column_gains,
    comparison,
    comparisons,
    pooled,
    provenance_warning,
    verdict,
    without_diverged,
)
from normcl.utils.experiments.inference import ALPHA, Estimate
from normcl.utils.experiments.records import DIVERGED
from normcl.utils.experiments.tables import Report


def _num(value: float | None, fmt: str = "+.2f") -> str:
    return "–" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _interval(bounds: tuple[float, float] | None) -> str:
    return "–" if bounds is None else f"[{bounds[0]:+.2f}, {bounds[1]:+.2f}]"


def _ci(e: Estimate) -> str:
    """The estimate's 95 % interval, as :func:`_interval` writes it."""
    return _interval(None if e.low is None else (e.low, e.high))


def _metrics(report: Report) -> list[str]:
    stream = any(r.anytime for e in report.entries.values() for r in e.runs)
    return [m for m, _ in METRICS if stream or m not in STREAM_METRICS]


def _notes(report: Report, comps: Sequence[Comparison]) -> list[str]:
    """The one-line warnings under a table: what differs besides the norm, and mixed provenance."""
    out = [f"- ⚠ {c.label} differs in more than the norm: {' and '.join(c.differs)}." for c in comps if c.differs]
    out += [f"- ⚠ {w}" for c in comps if (w := provenance_warning(report, c))]
    return out


def column_tables(report: Report, header: str, rule: str) -> list[str]:
    """Per metric, each comparison's paired gain in each column."""
    comps = comparisons(report)
    # ⚠ on a comparison that differs in more than the norm or pools runs of different code or machines
    labels = {c: c.label + (" ⚠" if c.differs or provenance_warning(report, c) else "") for c in comps}
    out: list[str] = []
    for metric in _metrics(report):
        rows = []
        for comp in comps:
            gains = column_gains(report, comp, metric)
            cells = [g.text() if (g := gains.get(c)) else "" for c in report.columns]
            if any(cells):
                rows.append(f"| {labels[comp]} | " + " | ".join(cells) + " |")
        if rows:
            out += [f"## Gain over BN per column, paired by seed: {METRIC_NAMES[metric]} (points)", ""]
            out += [
                "Per cell: mean ± sample std over seeds of (method − its BN row) on the same seed (number of seeds; "
                f"on how many the method was ahead; its runs that {DIVERGED}, paired with nothing). Each method is "
                "compared with the BN row run as it is (forward mode, affine parameters) where the grid has one; "
                "⚠: the comparison differs in more than the norm or pools runs of different code or machines (the "
                "notes under the pooled table).",
                "",
                header.replace("| method |", "| comparison |", 1),
                rule,
                *rows,
                "",
            ]
    return out


def pooled_table(report: Report, primary: Primary | None = None) -> list[str]:
    """Every comparison × metric pooled at the seed level, one Holm family (the declared primary left out)."""
    rows = [p for comp in comparisons(report) for m in _metrics(report) if (p := pooled(report, comp, m))]
    if not rows:
        return []
    is_primary = [
        primary is not None and (p.comparison.method, p.comparison.baseline, p.metric) == _key(primary) for p in rows
    ]
    adjusted, rejected = inference.holm(
        [None if prim else p.estimate.p for p, prim in zip(rows, is_primary, strict=True)]
    )
    family = sum(a is not None for a in adjusted)
    level = inference.holm_level(family, rejected)
    out = [
        "## Gain over BN pooled over columns, at the seed level",
        "",
        "Per seed, the mean over the columns of the paired gain (method − its BN row); then over the seeds, which are "
        "the independent units (a seed fixes the class order, the weights and the evaluation images in every column): "
        "the mean, its 95 % interval (Student's t, seeds − 1 degrees of freedom), the two-sided p (exact sign-flip "
        f"test over the 2ⁿ sign patterns up to {inference.EXACT_UP_TO} seeds, else the t-test's; with 5 seeds it "
        "cannot go below 0.0625) and d_z (mean / sd of the per-seed gains). Exploratory: the table's "
        f"{family} rows are one family; Holm's adjustment rejects {rejected} at {ALPHA:g}. The family-wise interval "
        f"of a row Holm does not reject is at the level compatible with Holm's procedure, {100 * level:.2f} % "
        "(Strassburger & Bretz 2008); of a rejected row, only the side of 0 its gain lies on. "
        f"Runs that {DIVERGED} are left out; *seeds short*: seeds missing one of the columns.",
        "",
        "| comparison | metric | seeds | columns | seeds short | mean gain | 95 % interval | p | d_z | Holm p "
        "| family-wise interval |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p, adj, prim in zip(rows, adjusted, is_primary, strict=True):
        e = p.estimate
        if prim:
            holm_cells = ["primary, not in the family: its section decides (diverged runs at chance)", "–"]
        elif adj is not None and adj <= ALPHA:  # Holm rejects: compatible with a one-sided bound at 0 only
            holm_cells = [_p(adj), "above 0" if (e.mean or 0) > 0 else "below 0"]
        else:
            holm_cells = [_p(adj), _interval(e.interval_at(level))]
        cells = [p.comparison.label, METRIC_NAMES[p.metric], str(e.units), str(p.columns), str(p.incomplete)]
        cells += [_num(e.mean), _ci(e), _p(e.p), _num(e.d_z, ".2f")]
        out.append("| " + " | ".join(cells + holm_cells) + " |")
    return [*out, "", *_notes(report, comparisons(report)), ""]


def _key(primary: Primary) -> tuple[str, str, str]:
    return (primary.method, primary.baseline, primary.metric)


def primary_section(report: Report, primary: Primary) -> list[str]:
    """The declared endpoint: its rule, its units, the estimate, the verdict, and the same without the seeds that
    hold a diverged run."""
    labels = [report.label(m) if m in report.methods else m for m in (primary.method, primary.baseline)]
    name = f"{labels[0]} − {labels[1]}, {METRIC_NAMES.get(primary.metric, primary.metric)}"
    out = [f"## Primary endpoint (declared): {name}", ""]
    if primary.method not in report.methods or primary.baseline not in report.methods:
        missing = [m for m in (primary.method, primary.baseline) if m not in report.methods]
        return [*out, f"No runs of {' or '.join(missing)} in this folder yet.", ""]
    comp = comparison(report, primary.method, primary.baseline)
    assert comp is not None
    chance = {r.chance for (m, _), e in report.entries.items() if m in (comp.method, comp.baseline) for r in e.diverged}
    rule = f"a run that {DIVERGED} scores chance ({', '.join(f'{c:g} %' for c in sorted(chance, key=str))})"
    result = pooled(report, comp, primary.metric, at_chance=True)
    if result is None:
        return [*out, f"{comp.label}: no seed with both yet.", ""]
    e, columns = result.estimate, len(report.columns)
    missing = columns - result.columns
    short = f"{result.incomplete} seeds short of a column" + (f", {missing} columns without both" if missing else "")
    declared = "" if primary.seeds is None else f" of the {primary.seeds} declared"
    complete = not result.incomplete and not missing and e.units >= (primary.seeds or 0)
    out += [
        f"{comp.label}: per seed the mean over the columns, then over the seeds (the units); {rule}. Decided by the "
        f"exact sign-flip p at {ALPHA:g} with the 95 % Student-t interval beside it, once every seed has both in "
        f"every column.",
        "",
        f"- Units: {e.units} seeds{declared}, {result.columns} of {columns} columns ({short}).",
        f"- {'Gain' if complete else 'Interim gain'}: {_num(e.mean)} points, 95 % interval "
        f"{_ci(e)}, p {_p(e.p)}, d_z {_num(e.d_z, '.2f')}; ahead on "
        f"{e.ahead} of {e.units} seeds.",
        f"- Verdict: {verdict(e) if complete else INTERIM}.",
    ]
    without = without_diverged(report, comp, primary.metric)
    if without is not None:
        w = without.estimate
        out.append(
            f"- Without the seeds that hold a diverged run: {w.units} seeds, {_num(w.mean)} points, "
            f"{_ci(w)}, p {_p(w.p)}."
        )
    return [*out, *_notes(report, [comp]), ""]


def markdown(report: Report, header: str, rule: str, primary: Primary | None = None) -> list[str]:
    """The primary endpoint (when declared), the per-column gain tables and the pooled table."""
    out = primary_section(report, primary) if primary else []
    return out + column_tables(report, header, rule) + pooled_table(report, primary)
