"""Results JSON files as records: what the report, the results page and ``--tune validation``'s choice read.

A run's method comes from its arguments (:func:`~utils.experiments.methods.method_of`), so results of any launcher,
not only ``run.py``, are grouped the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.experiments.methods import Config, GridKey, method_of

PROTOCOL_FIELDS = (
    "n_epochs",
    "batch_size",
    "minibatch_size",
    "buffer_mode",
    "samples_per_class",
    "nf",
    "backbone",
    "lr",
    "alpha",
    "beta",
    "optim_wd",
    "optim_mom",
    "no_task_shuffle",
    "amp",
)
"""Arguments that change the experiment itself: runs differing in them are never averaged together."""
PROTOCOL_DEFAULTS = {"amp": 0}
"""Values of protocol fields added later, for results files written before them."""
PARTIAL_SUFFIX = ".partial.json"
"""``utils.results.partial_results_file``: what a run stopped by a non-finite loss leaves; never a result."""


@dataclass(frozen=True, eq=False)
class Record:
    """One results file, reduced to what the tables and plots need."""

    path: Path
    method: str
    config: Config | None
    dataset: str
    model: str
    buffer_size: int | None
    seed: int | None
    validation: bool
    protocol: tuple[tuple[str, Any], ...]
    class_il: float
    task_il: float
    forgetting: float | None
    matrix: list[list[float | None]]
    drift: list[dict[str, float]] | None
    args: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def key(self) -> GridKey:
        """The record's column, as the launcher's runs name it."""
        return (self.dataset, self.model, self.buffer_size)


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std of the finite values over seeds (``None`` when there are none, or one for the std)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(None, None, 0)
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return cls(float(np.mean(vals)), std, len(vals))

    def text(self, n: int | None = None) -> str:
        if self.mean is None:
            return "–"
        body = f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"
        return f"{body} ({self.n if n is None else n})"


def _record(path: Path, doc: dict[str, Any]) -> Record:
    args = doc["args"]
    final = doc["final"]
    config = Config.of(args)
    diagnostics = doc.get("norm_diagnostics") or None
    drift = [d.get("summary") or {} for d in diagnostics] if diagnostics else None
    if drift is not None and not any(drift):
        drift = None  # layers without running statistics (GN, LN, IN): nothing was measured
    return Record(
        path=path,
        method=method_of(args),
        config=config,
        dataset=str(args["dataset"]),
        model=str(args["model"]),
        buffer_size=args.get("buffer_size"),
        seed=args.get("seed"),
        validation=bool(args.get("validation")),
        protocol=tuple((f, args.get(f, PROTOCOL_DEFAULTS.get(f))) for f in PROTOCOL_FIELDS),
        class_il=float(final["class_il_avg"]),
        task_il=float(final["task_il_avg"]),
        forgetting=None if final.get("forgetting") is None else float(final["forgetting"]),
        matrix=doc["accuracy_matrix"]["class_il"],
        drift=drift,
        args=args,
        environment=doc.get("environment") or {},
        seconds=float((doc.get("timing") or {}).get("total_seconds", 0.0)),
    )


def load_records(root: Path) -> tuple[list[Record], list[str]]:
    """Every completed class-IL results file under ``root``; partial, incomplete and unreadable files are listed
    as warnings, not fatal."""
    records, warnings = [], []
    for path in sorted(root.rglob("*.json")):
        if path.name.endswith(PARTIAL_SUFFIX):
            warnings.append(f"skipped {path}: partial results of a run that stopped early")
            continue
        try:
            doc = json.loads(path.read_text())
            if doc.get("setting", "class-il") != "class-il":
                continue
            record = _record(path, doc)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            warnings.append(f"skipped {path}: not a results file ({type(e).__name__}: {e})")
            continue
        if not record.matrix or record.matrix[-1][-1] is None:
            warnings.append(f"skipped {path}: the last task was never evaluated")
            continue
        records.append(record)
    return records, warnings
