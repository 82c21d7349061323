"""The published results are what the code makes of their runs (issue 24): ``STEP=report bash
scripts/reproduce_fmnist.sh``, run with the script's own defaults in a copy of the repository whose report files are
deleted first, must write every report folder under ``docs/results/`` (each folder with a ``runs/``, and each other
folder with a ``report.md``, found from the folders, so a new one is covered without being listed here) and
``docs/results.md`` as they are committed.

Tables (``report.md``, ``results.tex``, the CSVs: every file but the figures) and the page, whose recorded
commands the script makes from its own grid (and the page plans them as their ``--dry_run`` does): byte for byte.
Figures: the same set of PNG files in every folder always (a figure the code no longer makes, or makes and nobody
committed, fails), and their decoded pixels only under the matplotlib version that drew the committed ones (the
``Software`` text of the PNG): requirements.txt does not pin matplotlib, whose layout and text rendering change
between versions, and the PNG bytes also depend on the zlib that Pillow was built with, so pixels rather than bytes,
and a skip naming both versions elsewhere. The regeneration is the script's whole report step: one Python process
per results folder (``utils.report --page``: its report, its figures, its part of the page and the plan of its grid
commands). The page's hand-written reading is checked against the tables: each number it cites is one of theirs."""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("scripts", "reproduce_fmnist.sh")
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
# Report folders: each with a runs/, and each other folder holding a report.md outside a runs/ (a report of some of
# a folder's runs, e.g. the stream grid's seeds 5-9).
PUBLISHED = sorted(
    {runs.parent.name for runs in RESULTS.glob("*/runs") if runs.is_dir()}
    | {
        str(f.parent.relative_to(RESULTS))
        for f in RESULTS.rglob("report.md")
        if "runs" not in f.relative_to(RESULTS).parts
    }
)


def _files(folder: Path) -> dict[str, Path]:
    return {f.name: f for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository (the code linked, ``docs/`` and the script copied) after the script's report step."""
    copy = tmp_path_factory.mktemp("published")
    for entry in ROOT.iterdir():
        if entry.name not in {".git", "docs", SCRIPT.parts[0]}:
            (copy / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / SCRIPT.parts[0], copy / SCRIPT.parts[0])
    # A local grid's logs, checkpoints and locks beside the published runs are no part of them.
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("logs", "*.ckpt*", ".*.lock"))
    for name in PUBLISHED:
        for f in _files(copy / "docs" / "results" / name).values():
            f.unlink()
    # The script runs ``python3`` (its default, which the page records): this interpreter, under that name.
    bin_dir = copy / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    script = (copy / SCRIPT).read_text()
    # The script's defaults, as the page was published with: every variable it reads with a default is unset.
    env = {k: v for k, v in os.environ.items() if k not in re.findall(r"\$\{(\w+):?-", script)}
    env.update(STEP="report", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(["bash", str(SCRIPT)], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"STEP=report bash {SCRIPT} failed:\n{done.stdout}\n{done.stderr}"
    return copy


def _same_text(committed: Path, made: Path) -> None:
    if committed.read_bytes() != made.read_bytes():
        diff = difflib.unified_diff(
            committed.read_text().splitlines(),
            made.read_text().splitlines(),
            "committed",
            "regenerated",
            lineterm="",
            n=1,
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"{committed.relative_to(ROOT)} is not what the code makes of its runs (STEP=report):\n{shown}")


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_report_file_is_what_the_code_makes_of_its_runs(regenerated: Path, name: str) -> None:
    committed = _files(DOCS / "results" / name)
    made = _files(regenerated / "docs" / "results" / name)
    assert made, f"STEP=report bash {SCRIPT} writes nothing in docs/results/{name}: publish it there (KEPT)"
    for file_name in sorted(committed.keys() & made.keys()):
        if not file_name.endswith(".png"):
            _same_text(committed[file_name], made[file_name])
    missing, extra = sorted(committed.keys() - made.keys()), sorted(made.keys() - committed.keys())
    assert not missing, f"docs/results/{name}: {missing} committed, no longer made"
    assert not extra, f"docs/results/{name}: {extra} made, not committed"


def test_the_page_is_what_the_code_makes_of_the_runs(regenerated: Path) -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    for page in pages:
        _same_text(page, regenerated / "docs" / page.name)


def _drawn_by(png: Path) -> str:
    software = Image.open(png).info.get("Software", "")
    found = re.match(r"Matplotlib version\s*(\S+?),", software)
    return found.group(1) if found else f"unknown ({software!r})"


def _pixels(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("RGBA"))


@pytest.mark.parametrize("name", PUBLISHED)
def test_figures_are_what_the_code_draws_pixel_for_pixel(regenerated: Path, name: str) -> None:
    figures = [f for f in _files(DOCS / "results" / name).values() if f.suffix == ".png"]
    drawn_by = {_drawn_by(f) for f in figures}
    if figures and drawn_by != {matplotlib.__version__}:
        pytest.skip(f"docs/results/{name}: figures drawn by matplotlib {drawn_by}, this is {matplotlib.__version__}")
    for png in figures:
        made = regenerated / "docs" / "results" / name / png.name
        assert made.exists(), f"{png.relative_to(ROOT)} is no longer drawn"
        same = np.array_equal(_pixels(made), _pixels(png))  # False also when the sizes differ
        assert same, f"{png.relative_to(ROOT)} is not what the code draws of its runs"


READING = ("## Reading", "What this does and does not say")
"""The hand-written reading of ``docs/results.md``, whose every number is said to be a table's."""
NUMBER = r"[+\-−]?\d+\.\d\d"
PAIR = re.compile(rf"\[({NUMBER}), ({NUMBER})\]|({NUMBER}) ± ({NUMBER})")
"""An interval ``[low, high]`` or a ``mean ± sd``: distinctive, where a lone number may match another by chance."""
LONE = re.compile(rf"(?<![\w.]){NUMBER}(?!\d)")


def _pairs(text: str) -> set[tuple[str, ...]]:
    return {tuple(n.replace("−", "-") for n in found if n) for found in PAIR.findall(text)}


def _numbers(text: str) -> set[str]:
    return {n.replace("−", "-").removeprefix("+") for n in LONE.findall(text)}


def test_every_number_of_the_reading_is_in_a_table() -> None:
    """The reading's intervals and ``mean ± sd`` pairs appear as they are in the page outside it or in a published
    report, and each other number with two decimals too (with its sign where the reading gives one): a reading left
    behind by regenerated tables fails here."""
    page = (DOCS / "results.md").read_text()
    start, end = page.index(READING[0]), page.index(READING[1])
    tables = [page[:start] + page[end:]]
    tables += [f.read_text() for name in PUBLISHED if (f := RESULTS / name / "report.md").exists()]
    pairs, numbers = set().union(*map(_pairs, tables)), set().union(*map(_numbers, tables))
    reading = page[start:end]
    stale = [" ".join(pair) for pair in _pairs(reading) - pairs]
    for token in LONE.findall(PAIR.sub("", reading)):
        number = token.replace("−", "-").removeprefix("+")
        if number not in numbers and (token[0] in "+-−" or f"-{number}" not in numbers):
            stale.append(token)
    assert not stale, f"docs/results.md's reading cites numbers that no table holds: {stale}"
