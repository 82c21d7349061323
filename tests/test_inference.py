"""Inference at the seed level (``utils/experiments/inference.py``): hand-computed values of every statistic, and a
simulation in which the columns of a grid share a seed effect, as the grids' columns share their seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normcl.utils.experiments import inference
from normcl.utils.experiments.inference import Estimate

T_975 = {2: 4.302653, 3: 3.182446, 4: 2.776445}  # Student's t quantiles by degrees of freedom


def test_sign_flip_p_by_hand() -> None:
    # [1, 2, 3]: |sum| 6 is reached by the all-plus and all-minus patterns alone, 2 of 8.
    assert inference.sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8
    # [3, -1, 2]: the 8 sums are ±6, ±4, ±2 and 0 twice; |sum| >= 4 in 4 of them.
    assert inference.sign_flip_p([3.0, -1.0, 2.0]) == 4 / 8
    # Five units never go below 2 / 32, ten below 2 / 1024: what the page's seed counts allow.
    assert inference.sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0625
    assert inference.sign_flip_p([float(v) for v in range(1, 11)]) == 2 / 1024
    assert inference.sign_flip_p([0.0, 0.0]) == 1.0
    assert inference.sign_flip_p([]) is None
    assert inference.sign_flip_p([1.0] * (inference.EXACT_UP_TO + 1)) is None  # the t-test's p then


def test_t_interval_t_test_and_d_z_by_hand() -> None:
    values = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sd sqrt(5/3)
    sd = math.sqrt(5 / 3)
    low, high = inference.t_interval(values)
    half = T_975[3] * sd / 2
    assert low == pytest.approx(2.5 - half, rel=1e-6) and high == pytest.approx(2.5 + half, rel=1e-6)
    e = Estimate.of(values)
    assert (e.units, e.mean, e.ahead) == (4, 2.5, 4)
    assert e.sd == pytest.approx(sd) and e.d_z == pytest.approx(2.5 / sd)
    assert e.p == e.p_exact == 2 / 16
    assert inference.t_interval([5.0]) is None and Estimate.of([5.0]).d_z is None
    same = Estimate.of([2.0, 2.0 + 1e-13, 2.0])  # a gain equal on every seed up to rounding: no spread
    assert same.sd == 0 and same.d_z is None and (same.low, same.high) == pytest.approx((2.0, 2.0))


def test_t_test_p_matches_the_t_distribution() -> None:
    values = [0.5, 1.5, -0.2, 2.0, 1.1]
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    t = mean / (sd / math.sqrt(5))
    # Not scipy's survival function (the implementation's): the t density with 4 df integrated numerically.
    grid = np.linspace(t, 60, 200_001)
    density = math.gamma(2.5) / (math.sqrt(4 * math.pi) * math.gamma(2)) * (1 + grid**2 / 4) ** -2.5
    tail = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid)))
    assert inference.t_test_p(values) == pytest.approx(2 * tail, rel=1e-4)


def test_holm_by_hand() -> None:
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, kept monotone: 0.06).
    # Steps: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 reject; 0.03 > 0.05/2 stops: two rejections.
    adjusted, rejected = inference.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02]) and rejected == 2
    assert inference.holm_level(4, 2) == pytest.approx(1 - 0.05 / 2)
    assert inference.holm_level(3, 3) == pytest.approx(0.95)
    adjusted, rejected = inference.holm([None, 0.5])  # None: outside the family
    assert adjusted == [None, 0.5] and rejected == 0


def test_seed_means_average_each_seeds_columns() -> None:
    pairs = {("a", 0): 1.0, ("b", 0): 3.0, ("a", 1): -1.0, ("a", 2): 4.0, ("b", 2): 0.0}
    assert inference.per_seed(pairs) == [2.0, -1.0, 2.0]  # seed 1 has one column


def _coverages(rng: np.random.Generator, reps: int, seeds: int, columns: int) -> tuple[float, float]:
    """How often the 95 % interval covers the true gain: pooling (column, seed) pairs as independent, against the
    seed-level interval of the report."""
    true_gain, seed_sd, column_sd = 1.0, 3.0, 1.0
    pooled_hits = seed_hits = 0
    for _ in range(reps):
        seed_effect = rng.normal(0, seed_sd, seeds)
        diffs = true_gain + seed_effect[None, :] + rng.normal(0, column_sd, (columns, seeds))
        pairs = {(c, s): float(diffs[c, s]) for c in range(columns) for s in range(seeds)}
        low, high = inference.t_interval(list(pairs.values()))
        pooled_hits += low <= true_gain <= high
        e = Estimate.of(inference.per_seed(pairs))
        seed_hits += e.low <= true_gain <= e.high
    return pooled_hits / reps, seed_hits / reps


def test_a_shared_seed_effect_breaks_the_pooled_interval_not_the_seed_level_one() -> None:
    # Four columns share five seeds, and each seed moves every column's gain alike: the 20 pairs are 5 units.
    pooled, seed_level = _coverages(np.random.default_rng(0), reps=2000, seeds=5, columns=4)
    assert pooled < 0.85  # 0.62 here: the old report's interval, treating the pairs as independent
    assert abs(seed_level - 0.95) < 0.015  # exact t on the per-seed means: 95 % up to the simulation's noise
