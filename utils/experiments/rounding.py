"""Rounding noise: how far a run moves when only its floating-point rounding changes, against how far seeds move it.

Online training amplifies rounding: the same configuration and seed under another kernel set or thread count trains
a different network (docs/reproducibility.md). ``python -m utils.report RERUNS --reruns_of BASE`` reads a folder
whose subfolders each rerun some of BASE's runs one way (``same``: the same settings, which must reproduce BASE bit
for bit; ``kernels``: the second kernel set of ``.ci/run``; ``threads``: another thread count; any name), matches
the runs by name, and tabulates per metric:

* the **rounding sd**: the sd between the reruns of one seed (BASE's run and each perturbing variant's), pooled over
  the seeds and cells (each seed's variance weighted by its degrees of freedom);
* the **seed sd**: the sd between BASE's runs in one cell (method, column, the method's configuration, split and
  protocol: all a run is but its seed), every seed BASE has there (the rerun seeds and the others: the seeds are
  exchangeable, and more of them estimate the spread better while the reruns are still landing), pooled alike; it
  holds the rounding noise too, so their ratio is the share of a seed's spread that rounding alone makes
  (Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021, separate such sources
  of variance);
* what it implies: a paired gain between two methods carries the rounding noise of both arms, so its sd is at least
  √2 × the rounding sd, and detecting a gain Δ with 80 % power in a two-sided 5 % test needs at least
  n ≈ 2 ((z₀.₉₇₅ + z₀.₈) · rounding sd / Δ)² seeds, however alike the methods are otherwise.

Identity variants (whose runs match BASE's environment: CPU, kernel set, limits, threads) are checked for bitwise
equality (parameters' SHA-256 and every metric) and left out of the spreads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from normcl.utils.experiments.gains import METRIC_NAMES, METRICS
from normcl.utils.experiments.methods import column_label
from normcl.utils.experiments.records import Record, load_records
from normcl.utils.experiments.tables import by_seed as by_seed_of

GAINS = (1.0, 2.0, 5.0)
"""The gains (points) whose seed counts the table gives."""
Z = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))


def _name(record: Record) -> str:
    return str(record.args.get("run_name") or record.path.stem)


def _machine(record: Record) -> tuple:
    e = record.environment
    return (e.get("cpu"), e.get("cpu_capability"), tuple(sorted((e.get("kernel_limits") or {}).items())),
            e.get("threads"))  # fmt: skip


def _values(record: Record) -> tuple:
    return (record.digest, record.matrix, *(getattr(record, m) for m, _ in METRICS))


@dataclass(frozen=True)
class Spread:
    """One metric's rounding and seed sd over the cells, and the seeds a gain needs because of rounding alone."""

    metric: str
    cells: int
    seeds: int
    reruns: int
    base_seeds: int
    rounding_sd: float
    seed_sd: float
    moves: dict[str, list[tuple[Record, float, float]]]
    """Per perturbation, each base run with its value and its rerun's."""

    @property
    def mean_abs(self) -> dict[str, float]:
        """Per perturbation, the mean distance between a base run and its rerun."""
        return {v: float(np.mean([abs(b - a) for _, a, b in m])) for v, m in self.moves.items()}

    @property
    def largest(self) -> dict[str, tuple[Record, float, float]]:
        """Per perturbation, the base run that moved most (the first of a tie), with its value and its rerun's."""
        return {v: max(m, key=lambda move: abs(move[2] - move[1])) for v, m in self.moves.items()}

    @property
    def ratio(self) -> float:
        return self.rounding_sd / self.seed_sd if self.seed_sd else math.nan

    def seeds_for(self, gain: float) -> int:
        return max(2, math.ceil(2 * (Z * self.rounding_sd / gain) ** 2))


@dataclass
class Rounding:
    """The reruns matched to their base runs: per variant, identity or perturbation; the spreads per metric."""

    variants: dict[str, list[tuple[Record, Record]]]
    identity: dict[str, bool]
    spreads: list[Spread]
    diverged: list[str]
    unmatched: list[str]


def _pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """The pooled sd of several groups: each group's variance weighted by its degrees of freedom."""
    groups = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / dof) if dof else math.nan


def _identity(record: Record) -> tuple:
    """What a run is but for its seed: method, column, the method's configuration, split and protocol."""
    return (record.method, record.key, record.config, record.validation, record.protocol)


def analyse(reruns_dir: Path, base_dir: Path) -> Rounding:
    """Match each variant subfolder's runs to ``base_dir``'s by run name and measure the spreads."""
    base = {_name(r): r for r in load_records(base_dir)[0]}
    variants: dict[str, list[tuple[Record, Record]]] = {}
    unmatched: list[str] = []
    for folder in sorted(p for p in reruns_dir.iterdir() if p.is_dir()):
        matched = []
        for rerun in load_records(folder)[0]:
            original = base.get(_name(rerun))
            if original is None:
                unmatched.append(f"{folder.name}/{_name(rerun)}")
            else:
                matched.append((original, rerun))
        if matched:
            variants[folder.name] = matched
    identity = {v: all(_machine(o) == _machine(r) for o, r in pairs) for v, pairs in variants.items()}
    diverged = [f"{v}/{_name(r)}" for v, pairs in variants.items() for o, r in pairs if r.diverged != o.diverged]
    perturbed = {_identity(o) for v, pairs in variants.items() if not identity[v] for o, _ in pairs}
    base_cells: dict[tuple, list[Record]] = defaultdict(list)  # each rerun configuration's base runs
    for record in base.values():
        if (cell := _identity(record)) in perturbed:
            base_cells[cell].append(record)
    base_seeds = {cell: by_seed_of(runs, f"the rounding report's base {cell[0]}") for cell, runs in base_cells.items()}
    spreads = []
    for metric, _ in METRICS:
        by_seed: dict[tuple, list[float]] = defaultdict(list)  # (configuration..., seed): base, then each rerun
        moves: dict[str, list[tuple[Record, float, float]]] = defaultdict(list)  # per variant: base run, a, b
        for variant, pairs in variants.items():
            if identity[variant]:
                continue
            for original, rerun in pairs:
                a, b = getattr(original, metric), getattr(rerun, metric)
                if a is None or b is None:
                    continue
                key = (*_identity(original), original.seed)
                by_seed[key] = by_seed[key] or [a]
                by_seed[key].append(b)
                moves[variant].append((original, a, b))
        if not by_seed:
            continue
        cells = {
            cell: [v for r in base_seeds[cell].values() if (v := getattr(r, metric)) is not None]
            for cell in {key[:-1] for key in by_seed}
        }
        spreads.append(
            Spread(
                metric,
                len(cells),
                len(by_seed),
                sum(len(v) - 1 for v in by_seed.values()),
                sum(len(v) for v in cells.values()),
                _pooled_sd(list(by_seed.values())),
                _pooled_sd(list(cells.values())),
                dict(moves),
            )
        )
    return Rounding(variants, identity, spreads, diverged, unmatched)


def markdown(rounding: Rounding, title: str) -> str:
    """The identity check, the spreads per metric with the seeds a gain needs, and what did not match."""
    out = [f"# {title}", ""]
    for variant, pairs in rounding.variants.items():
        kind = "identity check (same machine settings)" if rounding.identity[variant] else "perturbation"
        line = f"- `{variant}`: {len(pairs)} reruns, {kind}"
        if rounding.identity[variant]:
            same = sum(_values(o) == _values(r) for o, r in pairs)
            line += f"; {same} of {len(pairs)} bitwise identical to their base run (parameters' SHA-256, every metric)"
        out.append(line + ".")
    perturbing = [v for v in rounding.variants if not rounding.identity[v]]
    if rounding.spreads:
        gains = " | ".join(f"seeds for {g:g}" for g in GAINS)
        diffs = " | ".join(f"mean abs Δ, {v}" for v in perturbing)
        out += [
            "",
            "## Spread between reruns of one seed against the spread between seeds",
            "",
            "*Rounding sd*: between the reruns of one seed (the base run and each perturbation), pooled over the "
            "rerun seeds and cells (variances weighted by their degrees of freedom). *Seed sd*: between the base runs "
            "of one cell (a configuration: all a run is but its seed), every seed "
            "the base has there (*base seeds*, over the cells), pooled alike (it holds the rounding noise too). "
            "*Seeds for Δ*: the fewest seeds that detect a paired gain of Δ points with 80 % power (two-sided 5 %) "
            "when rounding is the only noise, 2 ((z₀.₉₇₅ + z₀.₈) · rounding sd / Δ)²: "
            "a floor, since methods differ in more than rounding.",
            "",
            "| metric | cells | rerun seeds | reruns | rounding sd | base seeds | seed sd | ratio | "
            f"{diffs} | {gains} |",
            "| --- |" + " --- |" * (7 + len(perturbing) + len(GAINS)),
        ]
        for s in rounding.spreads:
            cells = [METRIC_NAMES[s.metric], str(s.cells), str(s.seeds), str(s.reruns)]
            cells += [f"{s.rounding_sd:.2f}", str(s.base_seeds), f"{s.seed_sd:.2f}", f"{s.ratio:.2f}"]
            cells += [f"{s.mean_abs.get(v, math.nan):.2f}" for v in perturbing]
            cells += [str(s.seeds_for(g)) for g in GAINS]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "Cells: " + ", ".join(sorted({_cell(o) for v in perturbing for o, _ in rounding.variants[v]}))]
        out += [
            "",
            "## The run that moved most under each perturbation",
            "",
            "| metric | perturbation | run | base | rerun | Δ |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for s in rounding.spreads:
            for v in perturbing:
                if v in s.largest:
                    run, a, b = s.largest[v]
                    cells = [METRIC_NAMES[s.metric], v, f"{_cell(run)}, seed {run.seed}", f"{a:.2f}", f"{b:.2f}"]
                    out.append("| " + " | ".join([*cells, f"{b - a:+.2f}"]) + " |")
    if rounding.diverged:
        out += [
            "",
            "Reruns that diverged where their base run did not, or the reverse: " + ", ".join(rounding.diverged),
        ]
    if rounding.unmatched:
        out += ["", "Reruns without a base run of their name (left out): " + ", ".join(rounding.unmatched)]
    return "\n".join(out).rstrip() + "\n"


def _cell(record: Record) -> str:
    return f"{record.method} in {column_label(record.key)}"
