"""Inference at the unit of replication: the seed.

A seed fixes the class order, the initial weights, the data order and the evaluation images, and the columns of a
grid (model × buffer) share their seeds; so the runs of one seed are one cluster, and a gain pooled over columns has
as many independent units as seeds, not seeds × columns. Following Cameron & Miller ("A Practitioner's Guide to
Cluster-Robust Inference", J. Human Resources 50(2), 2015, section VI: with few clusters, aggregate to cluster means
and use t with G − 1 degrees of freedom), a pooled gain is the mean of the per-seed means of the paired differences,
with a Student-t interval on those means. Cluster means were chosen over a cluster bootstrap (unreliable with 5–10
clusters, the grids' size) and a mixed model (its degrees of freedom are themselves an approximation at this size);
they give the same estimate when every seed has every column.

Beside the interval: an exact two-sided sign-flip (Fisher–Pitman permutation) p-value over the 2ⁿ sign patterns
of the n per-seed means, exact for any distribution of the differences symmetric about 0 (its smallest value is
2 / 2ⁿ: 0.0625 with 5 seeds); the standardized effect size d_z = mean / sd of the per-seed differences (Lakens,
Frontiers in Psychology 4:863, 2013); and Holm's step-down adjustment of a family's p-values (Holm, Scand. J.
Statistics 6(2), 1979), with intervals at the level of Holm's last step, 1 − α / (m − r) for r rejections of m
hypotheses: the width that Strassburger & Bretz (Statistics in Medicine 27(24), 2008) give the hypotheses Holm does
not reject, and the one at which the rejected ones exclude 0.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
EXACT_UP_TO = 16
"""Sign-flip p-values enumerate all 2ⁿ patterns up to this many units (65 536 patterns); beyond it the table gives
the t-test's p, which the central limit makes accurate there."""


def seed_means(diffs: Iterable[tuple[Hashable, Hashable, float]]) -> dict[Hashable, float]:
    """``(column, seed, difference)`` triples to one value per seed: the mean over the seed's columns."""
    by_seed: dict[Hashable, list[float]] = defaultdict(list)
    for _, seed, value in diffs:
        by_seed[seed].append(value)
    return {seed: float(np.mean(values)) for seed, values in by_seed.items()}


def _sd(values: Sequence[float]) -> float | None:
    """The sample sd; 0 where the values differ by rounding alone (a gain equal on every seed); None for one."""
    if len(values) < 2:
        return None
    if max(values) - min(values) <= 1e-9 * max(1.0, abs(float(np.mean(values)))):
        return 0.0
    return float(np.std(values, ddof=1))


def t_interval(values: Sequence[float], level: float = 1 - ALPHA) -> tuple[float, float] | None:
    """Student-t interval for the mean of ``values`` (independent units); None below two units."""
    sd = _sd(values)
    if sd is None:
        return None
    n, mean = len(values), float(np.mean(values))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def t_test_p(values: Sequence[float]) -> float | None:
    """Two-sided one-sample t-test of mean 0; None below two units, 1 when every value is 0."""
    sd = _sd(values)
    if sd is None:
        return None
    if sd == 0:
        return 1.0 if float(np.mean(values)) == 0 else 0.0
    t = float(np.mean(values)) / (sd / math.sqrt(len(values)))
    return float(2 * stats.t.sf(abs(t), len(values) - 1))


def sign_flip_p(values: Sequence[float]) -> float | None:
    """Exact two-sided sign-flip p: the share of the 2ⁿ sign patterns whose |sum| is at least the observed one
    (the observed pattern included, so never below 2 / 2ⁿ); None beyond :data:`EXACT_UP_TO` units or without any."""
    n = len(values)
    if n == 0 or n > EXACT_UP_TO:
        return None
    x = np.asarray(values, dtype=float)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    sums = np.abs(signs @ x)
    observed = abs(float(x.sum()))
    return float(np.mean(sums >= observed - 1e-9 * max(1.0, observed)))


def holm(pvalues: Sequence[float | None], alpha: float = ALPHA) -> tuple[list[float | None], int]:
    """Holm-adjusted p-values (None where a test has none, outside the family) and how many Holm rejects at
    ``alpha``."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running, rejected, stopped = 0.0, 0, False
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
        if not stopped and p <= alpha / (m - rank):
            rejected += 1
        else:
            stopped = True
    return adjusted, rejected


def holm_level(family: int, rejected: int, alpha: float = ALPHA) -> float:
    """Confidence level of the simultaneous intervals compatible with Holm's procedure for the hypotheses it does not
    reject: ``1 − α / (m − r)`` (Strassburger & Bretz, Statistics in Medicine 2008, Section 3); a rejected
    hypothesis's compatible interval says only on which side of 0 the gain lies, so the report gives no interval
    there. With every hypothesis rejected no interval uses the level (``1 − α``, returned for a total function)."""
    return 1 - alpha / max(1, family - rejected)


@dataclass(frozen=True)
class Estimate:
    """A gain over independent units (``values``, one per seed): the mean and sd, the 95 % interval, the exact
    sign-flip p (None beyond :data:`EXACT_UP_TO` units), the t-test p, d_z and on how many units it is ahead."""

    values: tuple[float, ...]
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None
    p_exact: float | None
    p_t: float | None
    d_z: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        values = tuple(float(v) for v in values)
        if not values:
            return cls(values, None, None, None, None, None, None, None)
        mean = float(np.mean(values))
        sd = _sd(values)
        low, high = t_interval(values) or (None, None)
        d_z = mean / sd if sd else None
        return cls(values, mean, sd, low, high, sign_flip_p(values), t_test_p(values), d_z)

    @property
    def units(self) -> int:
        return len(self.values)

    @property
    def ahead(self) -> int:
        return sum(v > 0 for v in self.values)

    @property
    def p(self) -> float | None:
        """The p-value the tables use: exact sign-flip where the units are few, else the t-test's."""
        return self.p_exact if self.p_exact is not None else self.p_t

    def interval_at(self, level: float) -> tuple[float, float] | None:
        """The Student-t interval at another level (Holm's), from the same per-unit values."""
        return t_interval(self.values, level)


def per_seed(pairs: Mapping[tuple[Hashable, Hashable], float]) -> list[float]:
    """``{(column, seed): difference}`` to the per-seed means, ordered by seed."""
    means = seed_means((c, s, d) for (c, s), d in pairs.items())
    return [means[s] for s in sorted(means, key=lambda s: (s is None, s))]
