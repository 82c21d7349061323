"""``examples/quickstart.ipynb`` runs end to end in a fresh kernel (issue 25): two small runs through the Python API
and the plot of their accuracy matrices. The notebook is committed without outputs, which would go stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

nbformat = pytest.importorskip("nbformat")  # the project's test extra: pip install -e ".[test]" (.ci/run does)
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_plots_the_accuracy_matrices(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit it without outputs"
    resources = {"metadata": {"path": str(tmp_path)}}  # the kernel's folder: results/ goes there
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()  # or raises
    images = [output for output in code[-1].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1, code[-1].outputs
    written = sorted(p.name for p in (tmp_path / "results").rglob("*.json"))
    assert written == ["quickstart_AdaB2N.json", "quickstart_BN.json"]
    for path in (tmp_path / "results").rglob("*.json"):
        document = json.loads(path.read_text())
        assert document["args"]["model"] == "er_ace" and len(document["accuracy_matrix"]["class_il"]) == 5
