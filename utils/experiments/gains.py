"""Each method's gain over BatchNorm, per column and pooled at the seed level, with what the comparison holds equal.

A **comparison** is a method against the BN row that differs from it in as little as the report's runs allow: the
BN row run with the same forward mode (``BN-joint`` for the joint norms) and the same affine setting, else BN itself,
and then the table says in one line what differs besides the norm (the forward mode, ``--no_affine``). Per column
the gain is paired by seed; pooled over columns it is the mean of per-seed means, with as many independent units as
seeds (:mod:`.inference`), an exact sign-flip p, d_z and, across the table's rows (the family), Holm's adjustment.
One declared comparison may be the **primary endpoint** (``python -m utils.report --primary``): reported on its own,
unadjusted, with its rule for diverged runs, and left out of the exploratory family. The tables that show them are
:mod:`.gain_tables`'.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from normcl.utils.core.errors import UserError
from normcl.utils.experiments import inference
from normcl.utils.experiments.inference import ALPHA, Estimate
from normcl.utils.experiments.methods import BASELINE, PSEUDO_METHODS, norm_of
from normcl.utils.experiments.records import Record, Stat
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


def column_gains(report: Report, comp: Comparison, metric: str) -> dict[Column, Gain]:
    """The comparison's paired gain in each column where it has a pair: mean ± sd over seeds, on how many ahead, the
    method's diverged runs (paired with nothing)."""
    by_column: dict[Column, list[float]] = {}
    for (column, _), diff in pairs(report, comp, metric).items():
        by_column.setdefault(column, []).append(diff)
    return {
        column: Gain(Stat.of(diffs), sum(d > 0 for d in diffs), len(report.entries[(comp.method, column)].diverged))
        for column, diffs in by_column.items()
    }


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


def without_diverged(report: Report, comp: Comparison, metric: str) -> Pooled | None:
    diverged = {r.seed for (m, _), e in report.entries.items() if m in (comp.method, comp.baseline) for r in e.diverged}
    if not diverged:
        return None
    diffs = {k: v for k, v in pairs(report, comp, metric).items() if k[1] not in diverged}
    if not diffs:
        return None
    return Pooled(comp, metric, Estimate.of(inference.per_seed(diffs)), len({c for c, _ in diffs}), 0)
