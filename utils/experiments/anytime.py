"""The report's view of accuracy during the stream (runs with ``--eval_every``): AAA, end-ACC, min-ACC and WC-ACC
tables and per column a figure of each task's accuracy along the stream.

Nothing here appears for runs without an anytime curve, so reports of such runs are unchanged. The metrics are
``utils/metrics.py``'s: ``anytime_metrics``, read from each run's results file after its last task, and
``end_accuracy``, computed from the curve the file holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from normcl.utils.core.run_files import figure_file
from normcl.utils.experiments.methods import method_colour
from normcl.utils.experiments.plots import label, save_figure
from normcl.utils.experiments.records import Record
from normcl.utils.experiments.tables import Column, Report

STREAM_TABLES = (
    ("aaa", "Average anytime accuracy (AAA), class-IL (%)"),
    ("end_acc", "end-ACC: each earlier task's accuracy at the end of its own training, class-IL (%)"),
    ("min_acc", "min-ACC: each earlier task's lowest accuracy after it was learned, class-IL (%)"),
    ("wc_acc", "WC-ACC: worst-case accuracy after the last task, class-IL (%)"),
)


def _with_curves(report: Report) -> list[Record]:
    return [r for e in report.entries.values() for r in e.runs if r.anytime]


def _schedule(runs: list[Record]) -> str:
    """``--eval_every 20, --eval_subset 500`` (each value the runs used)."""
    every = sorted({r.args.get("eval_every") for r in runs})
    subset = sorted({r.args.get("eval_subset") for r in runs})
    return f"`--eval_every {'/'.join(map(str, every))}`, `--eval_subset {'/'.join(map(str, subset))}`"


def markdown(report: Report, header: str, rule: str) -> list[str]:
    """The tables, when runs with an anytime curve exist (the gains of all but end-ACC, a description of where
    min-ACC falls from, are :mod:`.gains`')."""
    runs = _with_curves(report)
    if not runs:
        return []
    out = [
        "## Accuracy during the stream",
        "",
        f"Runs with {_schedule(runs)}: every N steps and at each task end, the accuracy on a fixed subset of the test "
        "images of every task seen so far (the same images for every method of a seed). AAA (Caccia et al., ICLR "
        "2022): the mean over those points of the average accuracy on the tasks seen. min-ACC (De Lange et al., "
        "ICLR 2023): the mean over the earlier tasks of each one's lowest accuracy after its training ended; it "
        "falls from end-ACC, the mean over the same tasks of each one's accuracy at the end of its own training "
        "(on the same images): the distance is the stability gap and what forgetting lasts. WC-ACC = (1/k) · the last "
        "task's accuracy + (1 − 1/k) · min-ACC, k tasks. Mean ± sample std over seeds (number of seeds).",
        "",
    ]
    for metric, name in STREAM_TABLES:
        rows = []
        for m in report.methods:
            cells = [report.entries[(m, c)].text(metric) if (m, c) in report.entries else "" for c in report.columns]
            if any(cell not in ("", "–") for cell in cells):
                rows.append(f"| {report.label(m)} | " + " | ".join(cells) + " |")
        out += [f"### {name}", "", header, rule, *rows, ""]
    return out


def _task_curve(run: Record, task: int) -> dict[int, float]:
    """Task ``task``'s class-IL accuracy at each point of the run's curve from the task's start on, by step."""
    return {int(p["step"]): float(p["class_il"][task]) for p in run.anytime or [] if p["task"] >= task}


def plot_stream(report: Report, column: Column, out_dir: Path) -> list[Path]:
    """Each task's class-IL accuracy along the stream, one panel a task, mean over seeds with a ± std band, every
    method of the column (task ends dotted); nothing without anytime curves."""
    shown = [(m, report.entries[(m, column)]) for m in report.methods if (m, column) in report.entries]
    shown = [(m, e, [r for r in e.runs if r.anytime]) for m, e in shown]
    shown = [(m, e, runs) for m, e, runs in shown if runs]
    if not shown:
        return []
    n_tasks = max(len(r.matrix) for _, _, runs in shown for r in runs)
    fig = Figure(figsize=(3.0 * n_tasks + 0.6, 3.4))
    axes = fig.subplots(1, n_tasks, sharey=True, squeeze=False)[0]
    ends = sorted({int(p["step"]) for r in shown[0][2] for p in r.anytime or [] if p["end"]})
    for task, ax in enumerate(axes):
        for m, e, runs in shown:
            curves = [_task_curve(r, task) for r in runs]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            values = np.array([[c[s] for s in steps] for c in curves])
            mean, colour = values.mean(0), method_colour(m)
            ax.plot(steps, mean, color=colour, linewidth=1.2, label=f"{label(report, m, e)} ({len(runs)})")
            if len(runs) > 1:
                std = values.std(0, ddof=1)
                ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        for end in ends:
            ax.axvline(end, color="k", linestyle=":", linewidth=0.6)
        ax.set(title=f"task {task + 1}", xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("class-IL accuracy (%)")
    axes[-1].legend(fontsize="x-small", loc="lower left")
    fig.suptitle(f"{column.label}: each task's accuracy along the stream (mean ± std over seeds)")
    fig.tight_layout()
    return [save_figure(fig, figure_file(out_dir, "stream_accuracy", column.label))]
