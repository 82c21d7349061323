"""Make this repository's top-level packages the ones Python imports; every entry-point script imports this first.

The layout is mammoth's (top-level ``datasets``, ``utils``, ``models``, ``backbone``), and installed distributions with
those names (Hugging Face's ``datasets``, any ``utils`` or ``models``) would otherwise win from site-packages or
PYTHONPATH, so the repository root goes first on ``sys.path``, and a package's own folder that a script put there
(``utils/`` for ``python utils/main.py``) is dropped. ``pip install -e .`` installs this module, which is how a
script in a sub-folder finds it.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _keep(entry: str) -> bool:
    path = Path(entry or ".").resolve()
    return path != ROOT and not (ROOT in path.parents and (path / "__init__.py").exists())


sys.path[:] = [str(ROOT), *filter(_keep, sys.path)]
