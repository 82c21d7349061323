"""The report's tables written out: Markdown (``report.md``, also printed), CSV (``summary.csv``, ``sensitivity.csv``)
and LaTeX (``results.tex``); a cell is the mean ± sample standard deviation over seeds, with the number of seeds, and
the number of runs that diverged (non-finite loss), which the mean leaves out: ``41.00 ± 1.41 (2 + 1 diverged)``, or
``diverged (3)`` when every run of the cell did (the CSV files: ``n_diverged``, and ``diverged`` for the mean).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from normcl.utils.core.atomic import atomic_write_bytes
from normcl.utils.core.run_files import PARTIAL_SUFFIX
from normcl.utils.experiments import anytime, evidence, gain_tables, gains
from normcl.utils.experiments.methods import Config
from normcl.utils.experiments.records import DIVERGED, Stat, describe_stop
from normcl.utils.experiments.tables import ON_TEST, Column, Entry, Report, final_drift

METRICS = (("class_il", "Class-IL accuracy (%)"), ("task_il", "Task-IL accuracy (%)"), ("forgetting", "Forgetting"))
VALIDATION_MARK = "†"
DIVERGED_LEGEND = (
    f"`(n + k {DIVERGED})`: the mean is over n runs; k more stopped on a non-finite training loss (their results "
    f"are `NAME{PARTIAL_SUFFIX}`) and are left out. `{DIVERGED} (k)`: all k runs did. An AdaB²N configuration with "
    "a diverged run is never chosen."
)


def _cell_text(entry: Entry | None, metric: str) -> str:
    if entry is None:
        return ""
    text = entry.text(metric)
    return f"{text} {VALIDATION_MARK}" if entry.on_validation else text


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
            rows.append(f"| {report.label(m)} | " + " | ".join(cells) + " |")
    return rows


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


def markdown(report: Report, title: str, primary: gains.Primary | None = None) -> str:
    """The tables as Markdown: one per metric, the declared primary endpoint, the gains over BN per column and pooled
    at the seed level, the AdaB²N selection, and the sensitivity tables."""
    out = [f"# {title}", ""]
    out.append("Final values after the last task: mean ± sample std over seeds (number of seeds).")
    runs = [r for e in report.entries.values() for r in e.runs]
    tested = any(r.args.get("test_samples_per_class") for r in runs)
    for flag, verb, data in (
        ("samples_per_class", "Trained", "training"),
        ("test_samples_per_class", "Tested", "test"),
    ):
        subsets = sorted({r.args[flag] for r in runs if r.args.get(flag)})
        if subsets:
            which = "" if all(r.args.get(flag) for r in runs) else f" (the runs with `--{flag}`)"
            whole = "; the test sets are whole" if data == "training" and not tested else ""
            out.append(
                f"**{verb} on a subset{which}:** {' or '.join(map(str, subsets))} {data} images per class "
                f"(`--{flag}`), not the full {data} data{whole}."
            )
    if any(e.on_validation for e in report.entries.values()):
        out.append(f"{VALIDATION_MARK}: measured on the validation split (`--validation 1`), no test runs found.")
    if report.diverged:
        out.append(DIVERGED_LEGEND)
    out.append("")
    header = "| method | " + " | ".join(c.label for c in report.columns) + " |"
    rule = "| --- |" + " --- |" * len(report.columns)
    for metric, name in METRICS:
        out += [f"## {name}", "", header, rule]
        for m in report.methods:
            cells = [_cell_text(report.entries.get((m, c)), metric) for c in report.columns]
            out.append(f"| {report.label(m)} | " + " | ".join(cells) + " |")
        out.append("")
    out += gain_tables.markdown(report, header, rule, primary)
    out += evidence.markdown(report)
    out += anytime.markdown(report, header, rule)
    out += _drift_tables(report, header, rule)
    tuned = [(m, c) for m in report.methods for c in report.columns if (m, c) in report.sensitivity]
    if tuned:
        columns = ["method", "column", *Config._fields, "chosen on"]
        out += ["## AdaB²N configuration per column", "", f"| {' | '.join(columns)} |"]
        out.append("| --- | --- | --- | --- | --- | --- |")
        for m, c in tuned:
            e = report.entries[(m, c)]
            values = ("–",) * 3 if e.config is None else (f"{e.config[0]:g}", f"{e.config[1]:g}", str(e.config[2]))
            note = f"{e.selected_on} (no validation runs)" if e.selected_on == ON_TEST else e.selected_on
            out.append(f"| {report.label(m)} | {c.label} | {' | '.join(values)} | {note} |")
        out.append("")
        if any(report.entries[k].selected_on == ON_TEST for k in tuned):
            out += [
                "Where no `--validation 1` runs exist, the configuration is chosen on the same final test accuracy "
                "that the table reports, which is optimistic.",
                "",
            ]
        out += ["## AdaB²N sensitivity (class-IL accuracy, %)", ""]
        for m, c, cells, split in evidence.sensitivity_cells(report):
            rows, columns, panels = Config._fields  # a table of kappa × lambd per ada_t0
            for t0 in sorted({cfg[2] for cfg in cells}):
                kappas = sorted({cfg[0] for cfg in cells if cfg[2] == t0})
                lambdas = sorted({cfg[1] for cfg in cells if cfg[2] == t0})
                out += [f"### {report.label(m)}, {c.label}, {panels} = {t0} ({split} split)", ""]
                out.append(f"| {rows} \\ {columns} | " + " | ".join(f"{lam:g}" for lam in lambdas) + " |")
                out.append("| --- |" + " --- |" * len(lambdas))
                for k in kappas:
                    row = [cells[(k, lam, t0)].text("class_il") if (k, lam, t0) in cells else "" for lam in lambdas]
                    out.append(f"| {k:g} | " + " | ".join(row) + " |")
                out.append("")
    out += _diverged_runs(report)
    out += [f"- {w}" for w in report.warnings]
    return "\n".join(out).rstrip() + "\n"


def _diverged_runs(report: Report) -> list[str]:
    """Which runs diverged and where: to judge them, or to delete their partial files and run them again."""
    if not report.diverged:
        return []
    out = [f"## Runs that {DIVERGED} ({len(report.diverged)})", ""]
    out += [f"- `{r.args.get('run_name') or r.path.name}`: {describe_stop(r.stopped)}" for r in report.diverged]
    return [*out, ""]


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _mean_std(entry: Entry, metric: str) -> list[str]:
    """The CSV's mean and std of a metric; the mean says ``diverged`` when every run of the cell did."""
    if entry.diverged and not entry.runs:
        return [DIVERGED, ""]
    s = entry.stat(metric)
    return [_num(s.mean), _num(s.std)]


def _write_csv(path: Path, rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_csv(report: Report, path: Path) -> None:
    """One row per method × column with every metric's mean, std and the seeds (``n_seeds``), and the runs that
    diverged (``n_diverged``) and the forward mode (``forward_mode``), last so that the earlier columns keep their
    places."""
    header = ["method", "dataset", "model", "buffer_size", "variant", "n_seeds", "seeds"]
    for metric, _ in METRICS:
        header += [f"{metric}_mean", f"{metric}_std"]
    rows: list[list[Any]] = [[*header, *Config._fields, "selected_on", "split", "n_diverged", "forward_mode"]]
    for m in report.methods:
        for c in report.columns:
            e = report.entries.get((m, c))
            if e is None:
                continue
            row: list[Any] = [m, c.dataset, c.model, "" if c.buffer_size < 0 else c.buffer_size]
            row += [";".join(f"{k}={v}" for k, v in c.variant), len(e.runs), " ".join(map(str, e.seeds))]
            for metric, _ in METRICS:
                row += _mean_std(e, metric)
            row += list(e.config) if e.config else [""] * len(Config._fields)
            row += [e.selected_on, "validation" if e.on_validation else "test", len(e.diverged)]
            rows.append([*row, "/".join(e.forward_modes)])
    _write_csv(path, rows)


def write_sensitivity_csv(report: Report, path: Path) -> None:
    """Every AdaB²N configuration's class-IL accuracy per column, on the split the selection used (``n_seeds``
    runs averaged, ``n_diverged`` left out; ``diverged`` for the mean when all of them diverged)."""
    header = ["method", "dataset", "model", "buffer_size", "variant", *Config._fields, "n_seeds"]
    rows: list[list[Any]] = [[*header, "class_il_mean", "class_il_std", "split", "n_diverged"]]
    for (m, c), cells in report.sensitivity.items():
        for config, e in sorted(cells.items()):
            buf = "" if c.buffer_size < 0 else c.buffer_size
            variant = ";".join(f"{k}={v}" for k, v in c.variant)
            row = [m, c.dataset, c.model, buf, variant, *config, len(e.runs), *_mean_std(e, "class_il")]
            rows.append([*row, report.sensitivity_split[(m, c)], len(e.diverged)])
    _write_csv(path, rows)


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", text).replace("κ", r"$\kappa$").replace("λ", r"$\lambda$")


def latex(report: Report) -> str:
    """One booktabs ``tabular`` per metric, cells ``$mean_{\\pm std}$`` (``+k diverged`` above them when k runs
    diverged, ``diverged`` when all did)."""
    out = ["% generated by utils/report.py; needs \\usepackage{booktabs}"]
    if report.diverged:
        out.append(f"% +k {DIVERGED}: k more runs stopped on a non-finite loss, left out of the mean")
    for metric, name in METRICS:
        out += [f"% {name}", "\\begin{tabular}{l" + "c" * len(report.columns) + "}", "\\toprule"]
        out.append("Method & " + " & ".join(_latex_escape(c.label) for c in report.columns) + " \\\\")
        out.append("\\midrule")
        for m in report.methods:
            cells = []
            for c in report.columns:
                e = report.entries.get((m, c))
                s = e.stat(metric) if e else Stat(None, None, 0)
                if e and e.diverged and not e.runs:
                    cells.append(DIVERGED)
                elif s.mean is None:
                    cells.append("--")
                else:
                    std = "" if s.std is None else f"_{{\\pm {s.std:.2f}}}"
                    more = f"\\textsuperscript{{+{len(e.diverged)} {DIVERGED}}}" if e and e.diverged else ""
                    cells.append(f"${s.mean:.2f}{std}$" + ("$^\\dagger$" if e and e.on_validation else "") + more)
            out.append(f"{_latex_escape(report.label(m))} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)
