"""AdaB²N's selection rule, the one the report's tables and ``run.py --tune validation`` both apply, so that phase 2
runs the configuration that the tables then report: per column, the configuration with the best mean class-IL
accuracy; ties go to the smallest configuration, so that reruns pick the same one. A configuration with a diverged
run (non-finite loss) is never chosen, as if its accuracy were −∞: the same seed diverges again in a rerun. (A
column that ran one configuration alone chose nothing: the tables report it, diverged runs counted.)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from normcl.utils.experiments.methods import ADAPTIVE_NORM, Config, GridKey
from normcl.utils.experiments.records import Record, Stat


def by_config(records: Iterable[Record]) -> dict[Config, list[Record]]:
    """The records of AdaB²N-family runs grouped by their configuration."""
    groups: dict[Config, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.config].append(r)  # type: ignore[index]
    return groups


def mean_class_il(records: Iterable[Record]) -> float | None:
    """The mean final class-IL accuracy that the rule compares (finite values only)."""
    return Stat.of(r.class_il for r in records).mean


def diverged_configs(groups: dict[Config, list[Record]]) -> list[Config]:
    """The configurations that the rule never chooses: a run of theirs diverged."""
    return sorted(c for c, runs in groups.items() if any(r.diverged for r in runs))


def score(records: Iterable[Record]) -> float:
    """What the rule maximises: the mean class-IL accuracy; −∞ when a run diverged or none has an accuracy."""
    runs = list(records)
    mean = None if any(r.diverged for r in runs) else mean_class_il(runs)
    return -math.inf if mean is None else mean


def best_config(groups: dict[Config, list[Record]]) -> Config | None:
    """The rule: the best mean class-IL accuracy; ties go to the smallest configuration; ``None`` when every
    configuration diverged (there is nothing to choose)."""
    left_out = set(diverged_configs(groups))
    choosable = sorted(c for c in groups if c not in left_out)
    return max(choosable, key=lambda c: score(groups[c])) if choosable else None


def validation_candidates(records: Iterable[Record]) -> dict[GridKey, dict[Config, list[Record]]]:
    """Per column, plain AdaB²N's validation runs by configuration (diverged ones too): what the rule chooses
    among."""
    columns: dict[GridKey, list[Record]] = defaultdict(list)
    for r in records:
        if r.method == ADAPTIVE_NORM and r.validation and r.config is not None:
            columns[r.key].append(r)
    return {key: by_config(runs) for key, runs in columns.items()}


def select_configs(records: Iterable[Record]) -> dict[GridKey, Config]:
    """Per dataset × model × buffer, the AdaB²N configuration with the best mean class-IL accuracy over its
    validation runs; a column whose configurations all diverged has none."""
    chosen = {key: best_config(groups) for key, groups in validation_candidates(records).items()}
    return {key: config for key, config in chosen.items() if config is not None}
