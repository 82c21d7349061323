"""The report's figures are legible (issue 37): in the accuracy matrices of a column, side by side, no panel's row
label or tick labels reach into its left neighbour (the "after task" label of every later panel once did)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_report import write_run

from normcl.utils.experiments import plots
from normcl.utils.experiments.report import write_report


def test_no_label_of_an_accuracy_matrix_overlaps_its_left_neighbour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for nl in ("BN", "GN", "CN", "AdaB2N"):
        write_run(tmp_path, nl, final=40.0, nl=nl, **({"kappa": 0.4} if nl == "AdaB2N" else {}))
    figures: dict[str, Figure] = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.setdefault(path.name.split("__")[0], fig))
    write_report(tmp_path, tmp_path / "out")
    figure = figures["accuracy_matrix"]
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    panels = [ax for ax in figure.axes if ax.get_images()]
    assert len(panels) == 4 and panels[0].get_ylabel() == "after task"
    for left, right in pairwise(panels):
        texts = [right.yaxis.label, *right.get_yticklabels(), right.title]
        boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
        assert boxes and not any(box.overlaps(left.get_window_extent(renderer)) for box in boxes), right.get_title()
