"""Results JSON files as records: what the report, the results page and ``--tune validation``'s choice read.

A run's method comes from its arguments (:func:`~utils.experiments.methods.method_of`), so results of any launcher,
not only ``run.py``, are grouped the same way. A partial results file (``NAME.partial.json``: the loss became NaN
or infinite) is a *diverged* record: its arguments count, its accuracies do not.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from normcl.datasets import DATASETS
from normcl.utils.component_options import component_options
from normcl.utils.core.run_files import final_results_file, is_partial_results
from normcl.utils.experiments.methods import PSEUDO_METHODS, Config, GridKey, method_of
from normcl.utils.metrics import end_accuracy
from normcl.utils.parser import build_parser, flag_roles


@functools.cache
def protocol_fields() -> tuple[tuple[str, Any], ...]:
    """The arguments that change the experiment itself, so that runs differing in them are never averaged together:
    the flags declared so (``Roles.protocol``) and every norm's, model's and dataset's own option, except those that
    the method's name (pseudo-methods) and AdaB²N's configuration already hold; each with the value that a results
    file written before it existed ran with (the flag's default, or the option's inactive value)."""
    before = {action.dest: action.default for action in build_parser()._actions}
    before |= {option.dest: option.value_when_inactive for _, _, option in component_options()}
    held = {*Config._fields, *(key for args in PSEUDO_METHODS.values() for key in args)}
    return tuple((dest, before[dest]) for dest, roles in flag_roles().items() if roles.protocol and dest not in held)


DIVERGED = "diverged"
"""How the tables, the CSV files and the launcher name a run stopped by a non-finite loss."""
STOP_REASON = "non-finite loss"
"""The reason of partial files written before their ``stopped`` entry: then the only writer of partial files."""


@dataclass(frozen=True, eq=False)
class Record:
    """One results file, reduced to what the tables and plots need; a diverged run's has no accuracies (``None``,
    an empty matrix) and keeps where it stopped."""

    path: Path
    method: str
    config: Config | None
    dataset: str
    model: str
    buffer_size: int | None
    seed: int | None
    validation: bool
    protocol: tuple[tuple[str, Any], ...]
    class_il: float | None
    task_il: float | None
    forgetting: float | None
    matrix: list[list[float | None]]
    drift: list[dict[str, float]] | None
    args: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: float | None = None  # when the results file was written (POSIX seconds; "created"), if it says
    diverged: bool = False
    stopped: dict[str, Any] | None = None
    aaa: float | None = None
    min_acc: float | None = None
    wc_acc: float | None = None
    """Class-IL AAA, min-ACC and WC-ACC after the last task (``--eval_every`` runs; ``None`` otherwise)."""
    end_acc: float | None = None
    """Class-IL end-ACC, computed from the curve (``utils/metrics.py``'s ``end_accuracy``): what min-ACC falls from."""
    anytime: list[dict[str, Any]] | None = None
    """The anytime curve (``normcl.utils.metrics.Curve``) of an ``--eval_every`` run."""
    forward_mode: str | None = None
    """How the run passed its stream and replay batches through the network (``joint``, ``separate``), as the
    results file records it; None for files that do not."""
    digest: str | None = None
    """The SHA-256 of the trained parameters (``parameters_sha256``): equal only for bitwise equal trainings."""
    chance: float | None = None
    """The accuracy (%) of guessing among the dataset's classes: what a declared endpoint may score a diverged run."""

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

    def text(self, n: int | None = None, diverged: int = 0) -> str:
        """``mean ± std (n)``, or ``(n + k diverged)`` when k more runs diverged and are left out of the mean."""
        if self.mean is None:
            return "–"
        body = f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"
        more = f" + {diverged} {DIVERGED}" if diverged else ""
        return f"{body} ({self.n if n is None else n}{more})"


def describe_stop(stopped: Mapping[str, Any] | None) -> str:
    """``non-finite loss at step S, task T`` (T 1-based, as ``utils/main.py`` prints it); only the reason for files
    written before the ``stopped`` entry."""
    if not stopped:
        return STOP_REASON
    step, task = stopped.get("step"), stopped.get("task")
    where = "" if step is None else f" at step {step}" + ("" if task is None else f", task {int(task) + 1}")
    return f"{stopped.get('reason', STOP_REASON)}{where}"


def read_stopped(partial: Path) -> dict[str, Any] | None:
    """A partial results file's ``stopped`` entry; ``None`` when it has none or cannot be read (the launcher's
    summary then says only why)."""
    try:
        stopped = json.loads(partial.read_text()).get("stopped")
    except (OSError, ValueError, AttributeError):
        return None
    return stopped if isinstance(stopped, dict) else None


def _record(path: Path, doc: dict[str, Any], diverged: bool = False) -> Record:
    """The record of a results file; of a partial one (``diverged``) only the run's identity, protocol and where it
    stopped: the tasks it finished would compare it with runs that were measured on all of them."""
    args = doc["args"]
    final = {} if diverged else doc["final"]
    config = Config.of(args)
    diagnostics = None if diverged else doc.get("norm_diagnostics") or None
    drift = [d.get("summary") or {} for d in diagnostics] if diagnostics else None
    if drift is not None and not any(drift):
        drift = None  # layers without running statistics (GN, LN, IN): nothing was measured
    stopped = doc.get("stopped") if diverged else None
    curve = None if diverged else (doc.get("anytime") or {}).get("curve")
    return Record(
        path=path,
        method=method_of(args),
        config=config,
        dataset=str(args["dataset"]),
        model=str(args["model"]),
        buffer_size=args.get("buffer_size"),
        seed=args.get("seed"),
        validation=bool(args.get("validation")),
        protocol=tuple((f, args.get(f, before)) for f, before in protocol_fields()),
        class_il=None if diverged else float(final["class_il_avg"]),
        task_il=None if diverged else float(final["task_il_avg"]),
        forgetting=None if diverged or final.get("forgetting") is None else float(final["forgetting"]),
        matrix=[] if diverged else doc["accuracy_matrix"]["class_il"],
        drift=drift,
        args=args,
        environment=doc.get("environment") or {},
        seconds=float((doc.get("timing") or {}).get("total_seconds", 0.0)),
        finished=_finished(doc.get("created")),
        diverged=diverged,
        stopped=stopped if isinstance(stopped, dict) else None,
        aaa=final.get("aaa"),
        min_acc=final.get("min_acc"),
        wc_acc=final.get("wc_acc"),
        anytime=curve,
        end_acc=end_accuracy(curve) if curve else None,
        forward_mode=doc.get("forward_mode"),
        digest=doc.get("parameters_sha256") if isinstance(doc.get("parameters_sha256"), str) else None,
        chance=chance_accuracy(str(args["dataset"])),
    )


@functools.cache
def chance_accuracy(dataset: str) -> float | None:
    """100 / the number of classes of a registered dataset; None for one this installation does not know."""
    if dataset not in DATASETS.names():
        return None
    cls = DATASETS.get(dataset)
    return 100.0 / (cls.N_TASKS * cls.N_CLASSES_PER_TASK)


def _finished(created: Any) -> float | None:
    """A results file's ``created`` time as POSIX seconds (UTC where it names no zone); None where it has none that
    reads: it only times the grid, so it never costs a run its place in the tables."""
    try:
        when = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def load_records(root: Path) -> tuple[list[Record], list[str]]:
    """Every completed class-IL results file under ``root``, and every diverged run's partial file as a diverged
    record (unless the run's final results exist: it was run again); incomplete and unreadable files are listed as
    warnings, not fatal."""
    records, warnings = [], []
    for path in sorted(root.rglob("*.json")):
        partial = is_partial_results(path)
        if partial and final_results_file(path).exists():
            continue
        try:
            doc = json.loads(path.read_text())
            if doc.get("setting", "class-il") != "class-il":
                continue
            record = _record(path, doc, diverged=partial)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            warnings.append(f"skipped {path}: not a results file ({type(e).__name__}: {e})")
            continue
        if not partial and (not record.matrix or record.matrix[-1][-1] is None):
            warnings.append(f"skipped {path}: the last task was never evaluated")
            continue
        records.append(record)
    return records, warnings
