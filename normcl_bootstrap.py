"""Make this repository's top-level packages the ones Python imports; every entry-point script imports this first.

The layout is mammoth's (top-level ``datasets``, ``utils``, ``models``, ``backbone``), and installed distributions with
those names (Hugging Face's ``datasets``, any ``utils`` or ``models``) would otherwise win from site-packages or
PYTHONPATH, so the clone of the running entry point goes first on ``sys.path``, and a package's own folder that a
script put there (``utils/`` for ``python utils/main.py``) is dropped. ``pip install -e .`` installs this module, which
is how a script in a sub-folder finds it; the clone is found from the script, so a second clone runs its own code.
"""

import sys
from pathlib import Path

import __main__


def _clone() -> Path:
    """The nearest folder above the running script (or module) that holds this file's name; else this file's own."""
    script = getattr(__main__, "__file__", None)
    start = Path(script).resolve().parent if script else Path(sys.path[0] or ".").resolve()
    for folder in (start, *start.parents):
        if (folder / Path(__file__).name).is_file():
            return folder
    return Path(__file__).resolve().parent


ROOT = _clone()


def _keep(entry: str) -> bool:
    path = Path(entry or ".").resolve()
    return path != ROOT and not (ROOT in path.parents and (path / "__init__.py").exists())


sys.path[:] = [str(ROOT), *filter(_keep, sys.path)]
