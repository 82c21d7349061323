"""The documentation's runnable code runs as shown (issue 37).

A code block whose fence says ``title="runnable"`` (the site shows the title above it) is run: each page's blocks
in order, in a fresh folder outside the clone, as a reader would run them one after the other (the README's tiny run
writes ``results/``, its report reads it). ``python`` blocks run in this interpreter, ``bash`` blocks in bash with
``python`` and the installed commands (``normcl-run``, ...) on the ``PATH``. No downloads, no wandb, one thread.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
RUNNABLE = 'title="runnable"'


def runnable_blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of the page's runnable blocks, in order; a fence that mentions ``runnable`` otherwise than
    the marker is an error (a typo would leave its block untested)."""
    blocks = []
    for language, info, code in FENCE.findall(page.read_text()):
        if "runnable" in info and info.strip() != RUNNABLE:
            pytest.fail(f"{page.name}: a fence says {info.strip()!r}; runnable blocks say {RUNNABLE}")
        if info.strip() == RUNNABLE:
            assert language in ("python", "bash"), f"{page.name}: a runnable {language} block"
            blocks.append((language, code))
    return blocks


def commands_folder() -> Path:
    """Where this interpreter's installation put the commands (``normcl-run``, ...): the environment's scripts
    folder, or the user's for a ``pip install --user``."""
    for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):
        folder = Path(sysconfig.get_path("scripts", scheme))
        if (folder / "normcl-run").is_file():
            return folder
    pytest.fail("normcl-run is not installed beside this Python: pip install -e . (scripts/setup.sh) installs it")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    shims = tmp_path_factory.mktemp("bin")
    (shims / "python").symlink_to(sys.executable)
    path = os.pathsep.join([str(shims), str(commands_folder()), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def test_the_pages_have_runnable_blocks() -> None:
    counted = {page.name: len(runnable_blocks(page)) for page in PAGES}
    assert counted["README.md"] == 2 and counted["own-code.md"] == 3, counted


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)], ids=lambda p: p.name)
def test_runnable_blocks_run_as_shown(page: Path, env: dict[str, str], tmp_path: Path) -> None:
    for language, code in runnable_blocks(page):
        argv = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{page.name}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
