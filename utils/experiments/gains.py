"""Each method's gain over BatchNorm, per column and pooled at the seed level, with what the comparison holds equal.

A **comparison** is a method against the BN row that differs from it in as little as the report's runs allow: the
BN row run with the same forward mode (``BN-joint`` for the joint norms) and the same affine setting, else BN itself,
and then the table says in one line what differs besides the norm (the forward mode, ``--no_affine``). Per column
the gain is paired by seed; pooled over columns it is the mean of per-seed means, with as many independent units as
seeds (:mod:`.inference`), an exact sign-flip p, d_z and, across the table's rows (the family), Holm's adjustment.
One declared comparison may be the **primary endpoint** (``python -m utils.report --primary``): reported on its own,
unadjusted, with its rule for diverged runs, and left out of the exploratory family.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from normcl.utils.core.errors import UserError
from normcl.utils.experiments import inference
from normcl.utils.experiments.inference import ALPHA, Estimate
from normcl.utils.experiments.methods import BASELINE, PSEUDO_METHODS, norm_of
from normcl.utils.experiments.records import DIVERGED, Record, Stat
from normcl.utils.experiments.tables import ON_TEST, Column, Entry, Gain, Report, by_seed

METRICS = (("class_il", "final class-IL"), ("aaa", "AAA"), ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"))
"""The metrics a gain is measured in: the final class-IL accuracy, and for runs with ``--eval_every`` the stream's."""
METRIC_NAMES = dict(METRICS)
STREAM_METRICS = ("aaa", "min_acc", "wc_acc")


@dataclass(frozen=True)
class Primary:
    """A declared primary endpoint: ``method − baseline`` in ``metric``; a diverged run scores chance. ``seeds``: the
    declared number of seeds, which the verdict waits for (``None``: the seeds present)."""

    method: str
    baseline: str
    metric: str
    seeds: int | None = None


@dataclass(frozen=True)
class Comparison:
    """A method against its BN row; ``differs``: what differs besides the norm, one phrase each."""

    method: str
    baseline: str
    label: str
    differs: tuple[str, ...]


def _affine(report: Report, method: str) -> tuple[bool, ...]:
    runs = [r for (m, _), e in report.entries.items() if m == method for r in e.runs + e.diverged]
    return tuple(sorted({not r.args.get("no_affine") for r in runs}))


def comparison(report: Report, method: str, baseline: str | None = None) -> Comparison | None:
    """``method`` against ``baseline`` (default: the BN row with the same forward mode and affine setting, else
    BN); None for BN itself or without a BN row."""
    if baseline is None:
        rows = [m for m in report.methods if m != method and (m == BASELINE or norm_of(m) == BASELINE)]
        rows = [m for m in rows if m == BASELINE or m in PSEUDO_METHODS]
        if not rows or method == BASELINE:
            return None
        modes, affine = report.forward_modes(method), _affine(report, method)
        baseline = min(
            rows,
            key=lambda m: (report.forward_modes(m) != modes, _affine(report, m) != affine, m != BASELINE, m),
        )
    differs = []
    modes, base_modes = report.forward_modes(method), report.forward_modes(baseline)
    if modes != base_modes:
        differs.append(f"the forward mode ({'/'.join(modes) or '?'} against {'/'.join(base_modes) or '?'})")
    affine, base_affine = _affine(report, method), _affine(report, baseline)
    if affine != base_affine:
        without = method if affine == (False,) else baseline
        differs.append(f"affine parameters ({report.label(without)} runs with `--no_affine`)")
    label = f"{report.label(method)} − {report.label(baseline)}"
    return Comparison(method, baseline, label, tuple(differs))


def comparisons(report: Report) -> list[Comparison]:
    """Every method's default comparison, in the report's row order."""
    return [c for m in report.methods if (c := comparison(report, m)) is not None]


def _cells(report: Report, comp: Comparison) -> list[tuple[Column, Entry, Entry]]:
    """The columns where both rows hold test-protocol runs; a cell whose configuration was picked on its own test
    runs among several is left out (its gain is optimistic by construction)."""
    out = []
    for column in report.columns:
        entry, base = report.entries.get((comp.method, column)), report.entries.get((comp.baseline, column))
        if entry is None or base is None or entry.on_validation or base.on_validation:
            continue
        if entry.selected_on == ON_TEST and len(report.sensitivity.get((comp.method, column), {})) > 1:
            continue
        out.append((column, entry, base))
    return out


def _value(run: Record, metric: str, at_chance: bool) -> float | None:
    if run.diverged:
        if at_chance and run.chance is None:
            raise UserError(
                f"{run.path}: diverged, and its dataset's chance level is unknown here (not a registered dataset), so "
                "the declared rule (a diverged run scores chance) cannot score it; report without --primary"
            )
        return run.chance if at_chance else None
    return getattr(run, metric)


def _by_seed(entry: Entry, comp: Comparison, column: Column) -> dict[Any, Record]:
    return by_seed(entry.runs + entry.diverged, f"{comp.label} in {column.label}")


def pairs(report: Report, comp: Comparison, metric: str, at_chance: bool = False) -> dict[tuple[Column, Any], float]:
    """``{(column, seed): method − baseline}`` over the seeds both rows ran in a column; a diverged run is left
    out, or scores chance (``at_chance``, a declared endpoint's rule)."""
    out = {}
    for column, entry, base in _cells(report, comp):
        base_of = {seed: _value(r, metric, at_chance) for seed, r in _by_seed(base, comp, column).items()}
        for seed, r in _by_seed(entry, comp, column).items():
            value, ref = _value(r, metric, at_chance), base_of.get(seed)
            if value is not None and ref is not None:
                out[(column, seed)] = value - ref
    return out


@dataclass(frozen=True)
class Pooled:
    """A comparison's gain in one metric pooled at the seed level: the estimate over the seeds, the columns it
    spans and how many seeds lack one of them."""

    comparison: Comparison
    metric: str
    estimate: Estimate
    columns: int
    incomplete: int


def pooled(report: Report, comp: Comparison, metric: str = "class_il", at_chance: bool = False) -> Pooled | None:
    diffs = pairs(report, comp, metric, at_chance)
    if not diffs:
        return None
    columns = {c for c, _ in diffs}
    seeds = Counter(s for _, s in diffs)
    incomplete = sum(n < len(columns) for n in seeds.values())
    return Pooled(comp, metric, Estimate.of(inference.per_seed(diffs)), len(columns), incomplete)


def column_gain(report: Report, comp: Comparison, column: Column, metric: str) -> Gain | None:
    """The comparison's paired gain in one column: mean ± sd over seeds, on how many ahead, the method's diverged
    runs (paired with nothing)."""
    diffs = [d for (c, _), d in pairs(report, comp, metric).items() if c == column]
    if not diffs:
        return None
    diverged = len(report.entries[(comp.method, column)].diverged)
    return Gain(Stat.of(diffs), sum(d > 0 for d in diffs), diverged)


def provenance_warning(report: Report, comp: Comparison) -> str | None:
    """One line when a comparison pools runs of different code versions, CPU models or kernel sets, with counts."""
    seeds = {(c, s) for c, s in pairs(report, comp, "class_il", at_chance=True)}
    runs = [
        r
        for column, entry, base in _cells(report, comp)
        for r in entry.runs + entry.diverged + base.runs + base.diverged
        if (column, r.seed) in seeds
    ]
    kinds = {
        "code versions": Counter(_code(r.environment) for r in runs),
        "CPU models": Counter(str(r.environment.get("cpu") or "unrecorded") for r in runs),
        "kernel sets": Counter(_kernels(r.environment) for r in runs),
    }
    mixed = {k: c for k, c in kinds.items() if len(c) > 1}
    if not mixed:
        return None
    parts = [f"{len(c)} {k} ({', '.join(f'{v}: {n}' for v, n in sorted(c.items()))})" for k, c in mixed.items()]
    return f"{comp.label} pools {len(runs)} runs of {'; '.join(parts)}."


def _code(environment: dict[str, Any]) -> str:
    commit = (environment.get("git_commit") or "unrecorded")[:7]
    return commit + (" with changes" if environment.get("git_dirty") else "")


def _kernels(environment: dict[str, Any]) -> str:
    limits = environment.get("kernel_limits") or {}
    capability = environment.get("cpu_capability") or "unrecorded"
    return capability + "".join(f" {k}={v}" for k, v in sorted(limits.items()))


def _num(value: float | None, fmt: str = "+.2f") -> str:
    return "–" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _interval(bounds: tuple[float, float] | None) -> str:
    return "–" if bounds is None else f"[{bounds[0]:+.2f}, {bounds[1]:+.2f}]"


def _metrics(report: Report) -> list[str]:
    stream = any(r.anytime for e in report.entries.values() for r in e.runs)
    return [m for m, _ in METRICS if stream or m not in STREAM_METRICS]


def _notes(report: Report, comps: Sequence[Comparison]) -> list[str]:
    """The one-line warnings under a table: what differs besides the norm, and mixed provenance."""
    out = [f"- ⚠ {c.label} differs in more than the norm: {' and '.join(c.differs)}." for c in comps if c.differs]
    out += [f"- ⚠ {w}" for c in comps if (w := provenance_warning(report, c))]
    return out


def _flagged(report: Report, comp: Comparison) -> bool:
    return bool(comp.differs) or provenance_warning(report, comp) is not None


def column_tables(report: Report, header: str, rule: str) -> list[str]:
    """Per metric, each comparison's paired gain in each column."""
    comps = comparisons(report)
    out: list[str] = []
    for metric in _metrics(report):
        rows = []
        for comp in comps:
            cells = [g.text() if (g := column_gain(report, comp, c, metric)) else "" for c in report.columns]
            if any(cells):
                rows.append(f"| {comp.label}{' ⚠' if _flagged(report, comp) else ''} | " + " | ".join(cells) + " |")
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
            holm_cells = ["primary: not in the family", "–"]
        elif adj is not None and adj <= ALPHA:  # Holm rejects: compatible with a one-sided bound at 0 only
            holm_cells = [_p(adj), "above 0" if (e.mean or 0) > 0 else "below 0"]
        else:
            holm_cells = [_p(adj), _interval(e.interval_at(level))]
        cells = [p.comparison.label, METRIC_NAMES[p.metric], str(e.units), str(p.columns), str(p.incomplete)]
        cells += [_num(e.mean), _interval(None if e.low is None else (e.low, e.high)), _p(e.p), _num(e.d_z, ".2f")]
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
        f"{_interval(None if e.low is None else (e.low, e.high))}, p {_p(e.p)}, d_z {_num(e.d_z, '.2f')}; ahead on "
        f"{e.ahead} of {e.units} seeds.",
        f"- Verdict: {verdict(e) if complete else INTERIM}.",
    ]
    without = _without_diverged(report, comp, primary.metric)
    if without is not None:
        w = without.estimate
        out.append(
            f"- Without the seeds that hold a diverged run: {w.units} seeds, {_num(w.mean)} points, "
            f"{_interval(None if w.low is None else (w.low, w.high))}, p {_p(w.p)}."
        )
    return [*out, *_notes(report, [comp]), ""]


INTERIM = (
    "none yet: the declared analysis waits for every seed in every column (an interim look on part of the runs "
    "decides nothing, and its seed means average different columns)"
)


def verdict(e: Estimate) -> str:
    """``shown`` only when the test rejects and the interval lies on one side of 0; otherwise ``not resolved``."""
    if e.p is None or e.low is None or e.high is None:
        return "not resolved (too few seeds for an interval)"
    if e.p < ALPHA and e.low > 0:
        return f"a gain is shown (p < {ALPHA:g}, interval above 0)"
    if e.p < ALPHA and e.high < 0:
        return f"a loss is shown (p < {ALPHA:g}, interval below 0)"
    return f"not resolved (p ≥ {ALPHA:g} or the interval includes 0): the data allow any gain in the interval"


def _without_diverged(report: Report, comp: Comparison, metric: str) -> Pooled | None:
    diverged = {r.seed for (m, _), e in report.entries.items() if m in (comp.method, comp.baseline) for r in e.diverged}
    if not diverged:
        return None
    diffs = {k: v for k, v in pairs(report, comp, metric).items() if k[1] not in diverged}
    if not diffs:
        return None
    return Pooled(comp, metric, Estimate.of(inference.per_seed(diffs)), len({c for c, _ in diffs}), 0)


def markdown(report: Report, header: str, rule: str, primary: Primary | None = None) -> list[str]:
    """The primary endpoint (when declared), the per-column gain tables and the pooled table."""
    out = primary_section(report, primary) if primary else []
    return out + column_tables(report, header, rule) + pooled_table(report, primary)
