"""The paper's tables and plots from a folder of results JSON files: ``python -m utils.report RESULTS_DIR``.

Rows are normalization methods, columns dataset × model × buffer size; a cell is the mean ± sample standard
deviation over seeds of the final class-IL accuracy, task-IL accuracy and forgetting, with the number of seeds.
Below them, each method's class-IL gain over BN paired by seed (a seed fixes class order and initialisation, so
the paired spread is the one that decides whether a gain is real) and, for ``--diagnose_norm 1`` runs, the running
statistics' distances to the task-balanced and to the latest task's statistics after the last task.
A run's method comes from its arguments (``nl``, an explicit ``forward_mode``, ``adab2n_renorm``), so results of
any launcher — not only ``run.py`` — are grouped the same way.

AdaB²N is a family of configurations ``(kappa, lambd, ada_t0)``: per column the report picks the configuration
with the best mean class-IL accuracy on the validation split when runs with ``--validation 1`` exist (and reports
the test runs of that configuration), otherwise on the final test accuracy, which the tables then say is
optimistic. A cell with a single configuration and no validation runs chose nothing on the test accuracy: the
table says it is AdaB²N's validation choice (``AdaB2N-renorm`` after ``run.py --tune validation``) or the only
configuration run. The sensitivity tables show every ``kappa × lambd`` configuration.

Writes ``report.md`` (also printed), ``summary.csv``, ``sensitivity.csv``, ``results.tex`` and PNG plots: average
class-IL accuracy after each task, the accuracy matrix, and — for runs with ``--diagnose_norm 1`` — the distance of
the running statistics to the task-balanced and to the latest task's statistics after each task.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import normcl_bootstrap  # noqa: F401  (first: this repository's packages win over installed ones)
from utils.core.atomic import atomic_write_bytes

METHOD_ORDER = ("BN", "BN-joint", "LN", "IN", "GN", "CN", "BRN", "AdaB2N", "AdaB2N-renorm")
DATASET_ORDER = ("seq-cifar10", "seq-cifar100", "seq-miniimg", "seq-fmnist")
ADAPTIVE_NORM = "AdaB2N"
BASELINE = "BN"
"""The row every other method's paired gain is measured against."""
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

METRICS = (("class_il", "Class-IL accuracy (%)"), ("task_il", "Task-IL accuracy (%)"), ("forgetting", "Forgetting"))
DRIFT_KEYS = ("mean_to_balanced", "mean_to_latest", "var_to_balanced", "var_to_latest")
VALIDATION_MARK = "†"
ON_VALIDATION = "validation"
ON_TEST = "final test accuracy"
ON_ADAPTIVE_CHOICE = f"{ADAPTIVE_NORM}'s validation choice"
ON_SINGLE = "only configuration run"
"""How an AdaB²N-family cell's configuration was chosen: on its validation runs; on the test accuracy it reports
(optimistic); it is the one the AdaB2N cell chose on validation (``run.py --tune validation`` runs AdaB2N-renorm so);
or it is the only one run."""

Config = tuple[float, float, int]


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


def method_of(args: dict[str, Any]) -> str:
    """The row of a run: its ``--nl``, ``-renorm`` for renormalised AdaB²N, ``-MODE`` for an explicit
    ``--forward_mode``, ``-noaffine`` for ``--no_affine`` (except CN, which always runs without)."""
    name = str(args.get("nl", "BN"))
    if name == ADAPTIVE_NORM and args.get("adab2n_renorm"):
        name += "-renorm"
    if args.get("forward_mode"):
        name += f"-{args['forward_mode']}"
    if args.get("no_affine") and not name.startswith("CN"):
        name += "-noaffine"
    return name


def _record(path: Path, doc: dict[str, Any]) -> Record:
    args = doc["args"]
    final = doc["final"]
    config = None
    if args.get("nl") == ADAPTIVE_NORM:
        config = (float(args["kappa"]), float(args["lambd"]), int(args["ada_t0"]))
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


PARTIAL_SUFFIX = ".partial.json"
"""``utils.results.partial_results_file``: what a run stopped by a non-finite loss leaves; never a result."""


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


# ----------------------------------------------------------------------------------------------- aggregation


@dataclass(frozen=True, order=True)
class Column:
    """dataset × model × buffer, plus any protocol differences that must not be averaged together."""

    dataset_rank: int
    dataset: str
    model: str
    buffer_size: int
    variant: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        buf = "" if self.buffer_size < 0 else f" {self.buffer_size}"
        extra = f" [{', '.join(f'{k}={v}' for k, v in self.variant)}]" if self.variant else ""
        return f"{self.dataset} {self.model}{buf}{extra}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", self.label).strip("_")


@dataclass(frozen=True)
class Stat:
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


@dataclass
class Entry:
    """A table cell: the runs reported for one method in one column, and how they were chosen."""

    runs: list[Record]
    config: Config | None = None
    selected_on: str = ""
    on_validation: bool = False

    def stat(self, metric: str) -> Stat:
        return Stat.of(getattr(r, metric) for r in self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return sorted({r.seed for r in self.runs}, key=lambda s: -1 if s is None else s)


@dataclass
class Report:
    columns: list[Column]
    methods: list[str]
    entries: dict[tuple[str, Column], Entry]
    sensitivity: dict[tuple[str, Column], dict[Config, Stat]] = field(default_factory=dict)
    sensitivity_split: dict[tuple[str, Column], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _columns(records: Sequence[Record]) -> dict[Record, Column]:
    """Column of each record; protocol fields that vary inside one dataset × model × buffer split it further."""
    groups: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.model, -1 if r.buffer_size is None else r.buffer_size)].append(r)
    varying = {
        f
        for runs in groups.values()
        for i, f in enumerate(PROTOCOL_FIELDS)
        if len({r.protocol[i][1] for r in runs}) > 1
    }
    out = {}
    for (dataset, model, buffer), runs in groups.items():
        rank = DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER)
        for r in runs:
            variant = tuple((k, str(v)) for k, v in r.protocol if k in varying)
            out[r] = Column(rank, dataset, model, buffer, variant)
    return out


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _by_config(runs: Iterable[Record]) -> dict[Config, list[Record]]:
    by_config: dict[Config, list[Record]] = defaultdict(list)
    for r in runs:
        by_config[r.config].append(r)  # type: ignore[index]
    return by_config


def _best_config(by_config: dict[Config, list[Record]]) -> Config:
    """The best mean class-IL accuracy; ties go to the smallest configuration, so reruns pick the same one."""
    return max(sorted(by_config), key=lambda c: Stat.of(r.class_il for r in by_config[c]).mean or -math.inf)


def select_configs(records: Iterable[Record]) -> dict[tuple[str, str, int | None], Config]:
    """Per dataset × model × buffer, the AdaB²N configuration with the best mean class-IL accuracy over its
    validation runs: the tables' own rule, public so that ``run.py --tune validation`` runs in phase 2 the
    configuration that the tables then report."""
    groups: dict[tuple[str, str, int | None], list[Record]] = defaultdict(list)
    for r in records:
        if r.method == ADAPTIVE_NORM and r.validation and r.config is not None:
            groups[(r.dataset, r.model, r.buffer_size)].append(r)
    return {key: _best_config(_by_config(runs)) for key, runs in groups.items()}


def build_report(records: Sequence[Record]) -> Report:
    """Group the records into the paper's table; for AdaB²N pick each column's best configuration."""
    column_of = _columns(records)
    cells: dict[tuple[str, Column], list[Record]] = defaultdict(list)
    for r in records:
        cells[(r.method, column_of[r])].append(r)
    columns = sorted(set(column_of.values()))
    methods = sorted({m for m, _ in cells}, key=_method_key)
    report = Report(columns, methods, {})
    for key, runs in cells.items():
        test = [r for r in runs if not r.validation]
        val = [r for r in runs if r.validation]
        if runs[0].config is None:
            chosen = test or val
            report.entries[key] = Entry(chosen, on_validation=not test)
            continue
        by_config = _by_config(val or test)
        best = _best_config(by_config)
        reported = [r for r in test if r.config == best] or [r for r in val if r.config == best]
        selected_on = ON_VALIDATION if val else ON_TEST
        on_validation = not any(r.config == best for r in test)
        report.entries[key] = Entry(reported, best, selected_on, on_validation)
        report.sensitivity[key] = {c: Stat.of(r.class_il for r in rs) for c, rs in by_config.items()}
        report.sensitivity_split[key] = "validation" if val else "test"
    for (method, column), entry in report.entries.items():
        if entry.selected_on != ON_TEST or len(report.sensitivity[(method, column)]) > 1:
            continue
        # One configuration and no validation runs: nothing was chosen on the test accuracy.
        base = report.entries.get((ADAPTIVE_NORM, column))
        inherited = base is not None and base.selected_on == ON_VALIDATION and base.config == entry.config
        entry.selected_on = ON_ADAPTIVE_CHOICE if method != ADAPTIVE_NORM and inherited else ON_SINGLE
    return report


# ----------------------------------------------------------------------------------------------- tables


def _cell_text(entry: Entry | None, metric: str) -> str:
    if entry is None:
        return ""
    text = entry.stat(metric).text()
    return f"{text} {VALIDATION_MARK}" if entry.on_validation else text


def _config_text(config: Config) -> str:
    return f"κ={config[0]:g}, λ={config[1]:g}, t0={config[2]}"


@dataclass(frozen=True)
class Gain:
    """A method's lead over the baseline on the same seeds (same class order, same initialisation)."""

    diff: Stat
    ahead: int


def paired_gain(report: Report, method: str, column: Column, metric: str = "class_il") -> Gain | None:
    """Mean ± std over seeds of ``method − BASELINE`` paired by seed, and on how many seeds the method led; None
    unless both cells hold test-protocol runs of a common seed. Pairing removes the class-order variation that
    seeds ≥ 1 introduce, which the unpaired stds include."""
    entry, base = report.entries.get((method, column)), report.entries.get((BASELINE, column))
    if method == BASELINE or entry is None or base is None or entry.on_validation or base.on_validation:
        return None
    base_of = {r.seed: getattr(r, metric) for r in base.runs}
    diffs = [getattr(r, metric) - base_of[r.seed] for r in entry.runs if base_of.get(r.seed) is not None]
    if not diffs:
        return None
    return Gain(Stat.of(diffs), sum(d > 0 for d in diffs))


def final_drift(entry: Entry) -> dict[str, Stat]:
    """The running statistics' distances after the last task (``DRIFT_KEYS``), over the cell's seeds."""
    last = [r.drift[-1] for r in entry.runs if r.drift and len(r.drift) == len(r.matrix)]
    return {k: Stat.of(d.get(k) for d in last) for k in DRIFT_KEYS}


def _gain_text(gain: Gain | None) -> str:
    if gain is None or gain.diff.mean is None:
        return ""
    spread = "" if gain.diff.std is None else f" ± {gain.diff.std:.2f}"
    return f"{gain.diff.mean:+.2f}{spread} ({gain.diff.n}; ahead on {gain.ahead})"


def _drift_text(drift: dict[str, Stat], stat: str) -> str:
    to_balanced, to_latest = drift[f"{stat}_to_balanced"], drift[f"{stat}_to_latest"]
    if to_balanced.mean is None or to_latest.mean is None:
        return ""
    return f"{to_balanced.mean:.3f} / {to_latest.mean:.3f}"


def _filled_rows(report: Report, cell: Callable[[str, Column], str]) -> list[str]:
    """Markdown rows of the methods with at least one non-empty cell."""
    rows = []
    for m in report.methods:
        cells = [cell(m, c) for c in report.columns]
        if any(cells):
            rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def _gain_table(report: Report, header: str, rule: str) -> list[str]:
    """The paper's claim in one table: class-IL accuracy gained over the baseline, paired by seed."""
    rows = _filled_rows(report, lambda m, c: _gain_text(paired_gain(report, m, c)))
    if not rows:
        return []
    return [
        f"## Gain over {BASELINE} in class-IL accuracy (points), paired by seed",
        "",
        f"Per cell: mean ± sample std over seeds of (method − {BASELINE}) on the same seed, (number of seeds; on "
        f"how many the method was ahead of {BASELINE}). Test-protocol runs only.",
        "",
        header,
        rule,
        *rows,
        "",
    ]


def _drift_tables(report: Report, header: str, rule: str) -> list[str]:
    drift = {key: final_drift(e) for key, e in report.entries.items() if not e.on_validation}
    out: list[str] = []
    for stat in ("mean", "var"):
        rows = _filled_rows(report, lambda m, c, s=stat: _drift_text(drift[(m, c)], s) if (m, c) in drift else "")
        if rows:
            out += [f"## Running {stat} after the last task: distance to the task-balanced / to the latest task's", ""]
            out.append(
                "RMS over channels, averaged over layers and seeds (`--diagnose_norm 1`, test-protocol runs). "
                "Recency bias: closer to the latest task than to the balanced statistics."
            )
            out += ["", header, rule, *rows, ""]
    return out


def markdown(report: Report, title: str) -> str:
    """The tables as Markdown: one per metric, the AdaB²N selection, and the sensitivity tables."""
    out = [f"# {title}", ""]
    out.append("Final values after the last task: mean ± sample std over seeds (number of seeds).")
    runs = [r for e in report.entries.values() for r in e.runs]
    subsets = sorted({r.args["samples_per_class"] for r in runs if r.args.get("samples_per_class")})
    if subsets:
        which = "" if all(r.args.get("samples_per_class") for r in runs) else " (the runs with `--samples_per_class`)"
        out.append(
            f"**Trained on a subset{which}:** {' or '.join(map(str, subsets))} training images per class "
            "(`--samples_per_class`), not the full training data; the test sets are whole."
        )
    if any(e.on_validation for e in report.entries.values()):
        out.append(f"{VALIDATION_MARK}: measured on the validation split (`--validation 1`), no test runs found.")
    out.append("")
    header = "| method | " + " | ".join(c.label for c in report.columns) + " |"
    rule = "| --- |" + " --- |" * len(report.columns)
    for metric, name in METRICS:
        out += [f"## {name}", "", header, rule]
        for m in report.methods:
            cells = [_cell_text(report.entries.get((m, c)), metric) for c in report.columns]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    out += _gain_table(report, header, rule)
    out += _drift_tables(report, header, rule)
    tuned = [(m, c) for m in report.methods for c in report.columns if (m, c) in report.sensitivity]
    if tuned:
        out += ["## AdaB²N configuration per column", "", "| method | column | kappa | lambd | ada_t0 | chosen on |"]
        out.append("| --- | --- | --- | --- | --- | --- |")
        for m, c in tuned:
            e = report.entries[(m, c)]
            kappa, lambd, t0 = e.config  # type: ignore[misc]
            note = f"{e.selected_on} (no validation runs)" if e.selected_on == ON_TEST else e.selected_on
            out.append(f"| {m} | {c.label} | {kappa:g} | {lambd:g} | {t0} | {note} |")
        out.append("")
        if any(report.entries[k].selected_on == ON_TEST for k in tuned):
            out += [
                "Where no `--validation 1` runs exist, the configuration is chosen on the same final test accuracy "
                "that the table reports, which is optimistic.",
                "",
            ]
        out += ["## AdaB²N sensitivity (class-IL accuracy, %)", ""]
        for m, c in tuned:
            stats = report.sensitivity[(m, c)]
            split = report.sensitivity_split[(m, c)]
            for t0 in sorted({cfg[2] for cfg in stats}):
                kappas = sorted({cfg[0] for cfg in stats if cfg[2] == t0})
                lambdas = sorted({cfg[1] for cfg in stats if cfg[2] == t0})
                out += [f"### {m}, {c.label}, ada_t0 = {t0} ({split} split)", ""]
                out.append("| kappa \\ lambd | " + " | ".join(f"{lam:g}" for lam in lambdas) + " |")
                out.append("| --- |" + " --- |" * len(lambdas))
                for k in kappas:
                    row = [stats[(k, lam, t0)].text() if (k, lam, t0) in stats else "" for lam in lambdas]
                    out.append(f"| {k:g} | " + " | ".join(row) + " |")
                out.append("")
    out += [f"- {w}" for w in report.warnings]
    return "\n".join(out).rstrip() + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _write_csv(path: Path, rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_csv(report: Report, path: Path) -> None:
    """One row per method × column with every metric's mean, std and the seeds (``n_seeds``)."""
    header = ["method", "dataset", "model", "buffer_size", "variant", "n_seeds", "seeds"]
    for metric, _ in METRICS:
        header += [f"{metric}_mean", f"{metric}_std"]
    rows: list[list[Any]] = [[*header, "kappa", "lambd", "ada_t0", "selected_on", "split"]]
    for m in report.methods:
        for c in report.columns:
            e = report.entries.get((m, c))
            if e is None:
                continue
            row: list[Any] = [m, c.dataset, c.model, "" if c.buffer_size < 0 else c.buffer_size]
            row += [";".join(f"{k}={v}" for k, v in c.variant), len(e.runs), " ".join(map(str, e.seeds))]
            for metric, _ in METRICS:
                s = e.stat(metric)
                row += [_num(s.mean), _num(s.std)]
            row += list(e.config) if e.config else ["", "", ""]
            row += [e.selected_on, "validation" if e.on_validation else "test"]
            rows.append(row)
    _write_csv(path, rows)


def write_sensitivity_csv(report: Report, path: Path) -> None:
    """Every AdaB²N configuration's class-IL accuracy per column, on the split the selection used."""
    header = ["method", "dataset", "model", "buffer_size", "variant", "kappa", "lambd", "ada_t0", "n_seeds"]
    rows: list[list[Any]] = [[*header, "class_il_mean", "class_il_std", "split"]]
    for (m, c), stats in report.sensitivity.items():
        for (kappa, lambd, t0), s in sorted(stats.items()):
            buf = "" if c.buffer_size < 0 else c.buffer_size
            variant = ";".join(f"{k}={v}" for k, v in c.variant)
            split = report.sensitivity_split[(m, c)]
            rows.append([m, c.dataset, c.model, buf, variant, kappa, lambd, t0, s.n, _num(s.mean), _num(s.std), split])
    _write_csv(path, rows)


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", text).replace("κ", r"$\kappa$").replace("λ", r"$\lambda$")


def latex(report: Report) -> str:
    """One booktabs ``tabular`` per metric, cells ``$mean_{\\pm std}$``."""
    out = ["% generated by utils/report.py; needs \\usepackage{booktabs}"]
    for metric, name in METRICS:
        out += [f"% {name}", "\\begin{tabular}{l" + "c" * len(report.columns) + "}", "\\toprule"]
        out.append("Method & " + " & ".join(_latex_escape(c.label) for c in report.columns) + " \\\\")
        out.append("\\midrule")
        for m in report.methods:
            cells = []
            for c in report.columns:
                e = report.entries.get((m, c))
                s = e.stat(metric) if e else Stat(None, None, 0)
                if s.mean is None:
                    cells.append("--")
                else:
                    std = "" if s.std is None else f"_{{\\pm {s.std:.2f}}}"
                    cells.append(f"${s.mean:.2f}{std}$" + ("$^\\dagger$" if e and e.on_validation else ""))
            out.append(f"{_latex_escape(m)} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- plots


def _avg_curve(matrix: list[list[float | None]]) -> list[float]:
    """Average class-IL accuracy over the tasks seen so far, after each task."""
    return [float(np.mean([v for v in row[: t + 1] if v is not None])) for t, row in enumerate(matrix)]


def _mean_matrix(runs: Sequence[Record]) -> np.ndarray:
    size = min(len(r.matrix) for r in runs)
    stack = np.array([[[np.nan if v is None else v for v in row[:size]] for row in r.matrix[:size]] for r in runs])
    measured = ~np.isnan(stack)
    count = measured.sum(0)
    mean = np.where(count > 0, np.where(measured, stack, 0.0).sum(0) / np.maximum(count, 1), np.nan)
    return np.where(np.tril(np.ones((size, size), dtype=bool)), mean, np.nan)


def _label(method: str, entry: Entry) -> str:
    return f"{method} ({_config_text(entry.config)})" if entry.config else method


def plot_column(report: Report, column: Column, out_dir: Path) -> list[Path]:
    """The accuracy curve, the accuracy matrices and (with diagnostics) the statistics drift of one column."""
    shown = [(m, report.entries[(m, column)]) for m in report.methods if (m, column) in report.entries]
    shown = [(m, e) for m, e in shown if e.runs]
    if not shown:
        return []
    paths = []

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for m, e in shown:
        size = min(len(r.matrix) for r in e.runs)
        curves = np.array([_avg_curve(r.matrix[:size]) for r in e.runs])
        x = np.arange(1, size + 1)
        mean = curves.mean(0)
        (line,) = ax.plot(x, mean, marker="o", label=_label(m, e))
        if len(curves) > 1:
            std = curves.std(0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.set_xticks(x)
    ax.set(xlabel="after task", ylabel="average class-IL accuracy (%)", title=column.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(_save_figure(fig, out_dir / f"accuracy_curve__{column.slug}.png"))

    fig = Figure(figsize=(3.2 * len(shown) + 0.8, 3.4))
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    image = None
    for ax, (m, e) in zip(axes, shown, strict=True):
        matrix = _mean_matrix(e.runs)
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        ticks = np.arange(len(matrix))
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_yticks(ticks, [str(t + 1) for t in ticks])
        ax.set(title=m, xlabel="task", ylabel="after task")
        if len(matrix) <= 10:
            for i, j in zip(*np.nonzero(~np.isnan(matrix)), strict=True):
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="class-IL accuracy (%)")
    fig.suptitle(column.label)
    paths.append(_save_figure(fig, out_dir / f"accuracy_matrix__{column.slug}.png"))

    with_drift = [(m, e, [r for r in e.runs if r.drift]) for m, e in shown]
    with_drift = [(m, e, runs) for m, e, runs in with_drift if runs]
    if with_drift:
        fig = Figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        for ax, stat in zip(axes, ("mean", "var"), strict=True):
            for i, (m, e, runs) in enumerate(with_drift):
                color = f"C{i}"
                for target, style in (("balanced", "-"), ("latest", "--")):
                    key = f"{stat}_to_{target}"
                    size = min(len(r.drift) for r in runs)  # type: ignore[arg-type]
                    values = np.array([[d.get(key, np.nan) for d in r.drift[:size]] for r in runs])  # type: ignore[index]
                    ax.plot(np.arange(1, size + 1), np.nanmean(values, 0), style, color=color, marker="o")
                    ax.set_xticks(np.arange(1, size + 1))
                ax.plot([], [], color=color, label=_label(m, e))
            ax.plot([], [], "k-", label="to task-balanced statistics")
            ax.plot([], [], "k--", label="to latest task's statistics")
            ax.set(xlabel="after task", ylabel=f"RMS distance of running {stat}", title=f"running {stat}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{column.label}: normalization statistics drift")
        fig.tight_layout()
        paths.append(_save_figure(fig, out_dir / f"norm_drift__{column.slug}.png"))
    return paths


# ----------------------------------------------------------------------------------------------- entry point


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    sensitivity_csv: Path
    latex: Path
    plots: list[Path]
    text: str


def write_report(root: Path, out_dir: Path | None = None, plots: bool = True) -> ReportFiles:
    """Load ``root``'s results, write every table and plot into ``out_dir`` (default ``root/report``)."""
    out_dir = out_dir or root / "report"
    records, warnings = load_records(root)
    report = build_report(records)
    report.warnings = warnings
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(report, f"Results in {root}")
    files = ReportFiles(
        markdown=out_dir / "report.md",
        csv=out_dir / "summary.csv",
        sensitivity_csv=out_dir / "sensitivity.csv",
        latex=out_dir / "results.tex",
        plots=[],
        text=text,
    )
    atomic_write_bytes(files.markdown, text.encode())
    write_csv(report, files.csv)
    write_sensitivity_csv(report, files.sensitivity_csv)
    atomic_write_bytes(files.latex, latex(report).encode())
    if plots:
        for column in report.columns:
            files.plots += plot_column(report, column, out_dir)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.report", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path, help="folder searched recursively for results JSON files")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    args = p.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: {args.results_dir} is not a folder; pass the --results_path of the runs", file=sys.stderr)
        return 2
    files = write_report(args.results_dir, args.out, plots=not args.no_plots)
    print(files.text)
    written = [files.markdown, files.csv, files.sensitivity_csv, files.latex, *files.plots]
    print(f"=> wrote {len(written)} file(s) to {files.markdown.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
