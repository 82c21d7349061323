"""normcl: normalization layers in continual learning — AdaB²N (Lyu et al., NeurIPS 2023) and baselines, mammoth-style.

The package is the repository's root (``normcl.models``, ``normcl.utils``, ``normcl.datasets``, ...). Its API::

    import normcl

    net = normcl.convert_norm(net, "AdaB2N", num_tasks=5, kappa=0.4, lambd=0.1)  # any model's BatchNorms swapped
    model, dataset = normcl.load_runner("er_ace", "seq-fmnist", {"nl": "AdaB2N", "buffer_size": 500, "lr": 0.03})
    results = normcl.train(model, dataset)  # the run `normcl-run` would do, and its results document

``get_avail_args()`` lists the arguments (the command line's flags); ``NORMS`` holds the norms by name
(``NORMS.names()``); ``TaskAwareNorm`` is the protocol a task-aware norm implements, and ``task_aware_layers``,
``task_counts`` and ``NormLosses`` are what a training loop of one's own needs to drive it (each batch's task ids,
the regulariser in the loss); ``UserError`` is what bad input raises;
``normcl.integrations.avalanche.TaskAwareNormPlugin`` drives task-aware norms in Avalanche's strategies.
Importing the package imports no torch: each name is imported on first use.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normcl.models.utils import NORMS
    from normcl.models.utils.norms import convert_norm
    from normcl.models.utils.task_aware import NormLosses, TaskAwareNorm, task_aware_layers, task_counts
    from normcl.utils.api import get_avail_args, load_runner, train
    from normcl.utils.core.errors import UserError

_HOMES = {
    "NORMS": "normcl.models.utils",
    "NormLosses": "normcl.models.utils.task_aware",
    "TaskAwareNorm": "normcl.models.utils.task_aware",
    "UserError": "normcl.utils.core.errors",
    "convert_norm": "normcl.models.utils.norms",
    "get_avail_args": "normcl.utils.api",
    "load_runner": "normcl.utils.api",
    "task_aware_layers": "normcl.models.utils.task_aware",
    "task_counts": "normcl.models.utils.task_aware",
    "train": "normcl.utils.api",
}
"""Each public name's module, imported when the name is first read."""

__all__ = [  # as _HOMES
    "NORMS",
    "NormLosses",
    "TaskAwareNorm",
    "UserError",
    "convert_norm",
    "get_avail_args",
    "load_runner",
    "task_aware_layers",
    "task_counts",
    "train",
]


PACKAGE = "normcl"
"""The one name the project is imported by: its folder is this package (``pyproject.toml``)."""
_CLONE_MARK = Path("models", "utils", "adab2n.py")
"""A file only a copy of this project has: what tells a script's clone."""


def require_package_name(name: str, init_file: str, runs_commands: bool = False) -> None:
    """Refuse, in one line naming ``normcl.…``, a package of this project imported under another name than its own
    (each package's ``__init__`` calls this with its ``__name__`` and ``__file__``). From a clone's root, mammoth's
    ``from models.utils.norms import convert_norm`` would import a second copy of the modules, whose registries are
    empty: ``convert_norm(net, "AdaB2N")`` would find no AdaB²N. This module itself holds no registry (its names are
    imported from ``normcl.…``), and pytest imports it by the clone's folder name when it collects the clone.
    ``runs_commands``: the package of ``python -m utils.main`` (``utils.report``, ``utils.results_page``) from a
    clone, which runpy imports by its folder's name while it finds the command (``sys.argv[0]`` is ``-m`` then); the
    command's code imports ``normcl``."""
    folder = Path(init_file).resolve().parent
    own = ".".join([PACKAGE, *folder.relative_to(Path(__file__).resolve().parent).parts])
    if name == own or (runs_commands and sys.argv[:1] == ["-m"]):
        return
    example = "from normcl.models.utils.norms import convert_norm"
    # A top-level name is found in the folder Python runs in first: there, the clone's folder hides an installed
    # package of the same name (Hugging Face's datasets beside the clone's datasets/).
    shadowed = "" if "." in name else f"; for another package named {name}, run Python outside the clone's folder"
    raise ImportError(
        f"{name} is the package {own} of this project imported by another name, which would be a second copy of it "
        f"with registries of its own: import {own} instead (e.g. {example}){shadowed}"
    )


def _installed_tool(path: Path, clone: Path) -> bool:
    """Whether ``path`` is an installed program rather than the clone's code: under the running interpreter's prefix,
    or in a virtual environment or site-packages inside the clone (``.venv/bin/pytest``, submitit's job runner)."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(prefix in path.parents for prefix in prefixes):
        return True
    inside = [folder for folder in path.parents if clone in folder.parents]
    return any(folder.name == "site-packages" or (folder / "pyvenv.cfg").is_file() for folder in inside)


def _check_clone() -> None:
    """Refuse a script of one copy of the project that would run another copy's code: ``python utils/main.py`` in a
    second clone imports whichever ``normcl`` the environment has installed, so its own edits would silently not run.
    One line and exit 2, at import, before anything runs. Scripts outside any copy of the project (the user's own, a
    notebook's kernel) and installed programs (pytest, submitit) are not checked."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if not script:
        return
    package = Path(__file__).resolve().parent
    path = Path(script).resolve()
    clone = next((folder for folder in path.parents if (folder / _CLONE_MARK).is_file()), None)
    if clone is None or clone == package or _installed_tool(path, clone):
        return
    print(
        f"error: {path} is in the copy of normcl at {clone}, but this Python imports normcl from {package}: run it "
        f"with a Python where that copy is installed (one virtual environment per clone, pip install -e {clone}), or "
        f"run {package}'s own script",
        file=sys.stderr,
    )
    raise SystemExit(2)


_check_clone()


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'normcl' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
