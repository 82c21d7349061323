"""The report's PNG plots per column: average class-IL accuracy after each task, the accuracy matrices, and (for
runs with ``--diagnose_norm 1``) the distance of the running statistics to the task-balanced and to the latest
task's statistics after each task.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from normcl.utils.core.atomic import atomic_write_bytes
from normcl.utils.core.run_files import figure_file
from normcl.utils.experiments.methods import method_colour
from normcl.utils.experiments.records import Record
from normcl.utils.experiments.tables import Column, Entry, Report


def save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _avg_curve(matrix: list[list[float | None]]) -> list[float]:
    """Average class-IL accuracy over the tasks seen so far, after each task."""
    return [float(np.mean([v for v in row[: t + 1] if v is not None])) for t, row in enumerate(matrix)]


def _mean_matrix(runs: Sequence[Record]) -> np.ndarray:
    size = min(len(r.matrix) for r in runs)
    stack = np.array([[[np.nan if v is None else v for v in row[:size]] for row in r.matrix[:size]] for r in runs])
    measured = ~np.isnan(stack)
    count = measured.sum(0)
    return np.where(count > 0, np.where(measured, stack, 0.0).sum(0) / np.maximum(count, 1), np.nan)


def draw_accuracy_matrix(
    ax: Axes, matrix: Sequence[Sequence[float | None]] | np.ndarray, title: str, ylabel: bool = True
) -> AxesImage:
    """An accuracy matrix (a results file's ``accuracy_matrix``: row i after task i, column j task j, in %) on ``ax``:
    the tasks trained so far (the lower triangle; ``None`` / NaN: not measured), with their values up to 10 tasks.
    ``ylabel``: name the rows ("after task"); panels side by side name them once, on the first (the label of a later
    panel would overlap its left neighbour)."""
    matrix = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    matrix = np.where(np.tril(np.ones(matrix.shape, dtype=bool)), matrix, np.nan)
    image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    ticks = np.arange(len(matrix))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set(title=title, xlabel="task", ylabel="after task" if ylabel else "")
    if len(matrix) <= 10:
        for i, j in zip(*np.nonzero(~np.isnan(matrix)), strict=True):
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
    return image


def label(report: Report, method: str, entry: Entry) -> str:
    """The method as the tables name it (with its forward mode), and its AdaB²N configuration."""
    name = report.label(method)
    return f"{name}, {entry.config.legend()}" if entry.config else name


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
        ax.plot(x, mean, marker="o", label=label(report, m, e), color=method_colour(m))
        if len(curves) > 1:
            std = curves.std(0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=method_colour(m))
        ax.set_xticks(x)
    ax.set(xlabel="after task", ylabel="average class-IL accuracy (%)", title=column.label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(save_figure(fig, figure_file(out_dir, "accuracy_curve", column.label)))

    fig = Figure(figsize=(3.2 * len(shown) + 0.8, 3.4))
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    image = None
    for i, (ax, (m, e)) in enumerate(zip(axes, shown, strict=True)):
        image = draw_accuracy_matrix(ax, _mean_matrix(e.runs), report.label(m), ylabel=i == 0)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="class-IL accuracy (%)")
    fig.suptitle(column.label)
    paths.append(save_figure(fig, figure_file(out_dir, "accuracy_matrix", column.label)))

    with_drift = [(m, e, [r for r in e.runs if r.drift]) for m, e in shown]
    with_drift = [(m, e, runs) for m, e, runs in with_drift if runs]
    if with_drift:
        fig = Figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        for ax, stat in zip(axes, ("mean", "var"), strict=True):
            for m, e, runs in with_drift:
                color = method_colour(m)
                for target, style in (("balanced", "-"), ("latest", "--")):
                    key = f"{stat}_to_{target}"
                    size = min(len(r.drift) for r in runs)  # type: ignore[arg-type]
                    values = np.array([[d.get(key, np.nan) for d in r.drift[:size]] for r in runs])  # type: ignore[index]
                    ax.plot(np.arange(1, size + 1), np.nanmean(values, 0), style, color=color, marker="o")
                    ax.set_xticks(np.arange(1, size + 1))
                ax.plot([], [], color=color, label=label(report, m, e))
            ax.plot([], [], "k-", label="to task-balanced statistics")
            ax.plot([], [], "k--", label="to latest task's statistics")
            ax.set(xlabel="after task", ylabel=f"RMS distance of running {stat}", title=f"running {stat}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{column.label}: normalization statistics drift")
        fig.tight_layout()
        paths.append(save_figure(fig, figure_file(out_dir, "norm_drift", column.label)))
    return paths
