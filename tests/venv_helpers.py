"""Shared helpers of the tests that start a second Python (``test_entry_points.py``, ``test_packaging.py``): a bare
virtual environment that sees the running interpreter's packages, and the names the project's folders would take
as top-level modules.

The suite may itself run in a virtual environment, where the base interpreter has no torch: the second Python is
built without the system's packages and reaches the running interpreter's site directories through a ``.pth`` file,
after its own site-packages (issue 22).
"""

from __future__ import annotations

import site
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The clone's folders of Python code and its top-level modules (run.py): none may be importable as a top-level name
# (installed, the packages among them are normcl.NAME; tests/ and examples/ are not installed).
PROJECT_NAMES = tuple(
    sorted(
        {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
        | {p.stem for p in REPO.glob("*.py") if p.stem != "__init__"}
    )
)


def bare_venv(root: Path) -> tuple[Path, Path]:
    """A virtual environment at ``root/venv`` without the system's packages and without pip: its interpreter and
    its (empty) site-packages."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return python, Path(proc.stdout.strip())


def running_site_dirs() -> list[str]:
    """The site directories this interpreter imports from: a venv's own (and the base's, where it sees them), or the
    system's, and the user's where pip installed there; each processed with its ``.pth`` files (editable installs)."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if d in sys.path]


def see_running_site_dirs(purelib: Path) -> Path:
    """Make the environment of ``purelib`` import the running interpreter's packages (torch, numpy, this project's
    editable install) after its own: a ``.pth`` file named to be processed last."""
    path = purelib / "zz_running_interpreter.pth"
    path.write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in running_site_dirs()))
    return path
