"""The project imports as one package, ``normcl``, and its command line without torch (issue 36).

Each package of the project (every folder with an ``__init__.py`` below the root, but the tests) refuses to be
imported under any other name, in one line naming ``normcl.…``: a second copy of the modules would have registries of
their own, empty (mammoth's ``from models.utils.norms import convert_norm`` in a clone's root found no AdaB²N). The
root's own module holds no registry, and pytest imports it by the clone's folder name. The modules that parse a run's
command line import no torch, so a launcher or a parser starts in a fraction of a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    p.parent for p in REPO.glob("*/**/__init__.py") if not {"tests", "docs"} & set(p.relative_to(REPO).parts)
)
"""The project's packages, found from the folders: a new one is covered without being listed."""


def python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(REPO.parent)))
def test_every_package_refuses_to_be_imported_by_another_name(package: Path) -> None:
    """Each package imported as a top-level name from its parent folder (a clone's root for ``models``, ``models``
    for ``models.utils``)."""
    own = ".".join(["normcl", *package.relative_to(REPO).parts])
    done = python(f"import {package.name}", cwd=package.parent)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: {package.name} is the package {own} of this project imported by")
    assert f"import {own} instead" in last


@pytest.mark.slow
def test_mammoths_import_from_the_clone_root_is_refused_naming_the_package() -> None:
    done = python("from models.utils.norms import convert_norm", cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: models is the package normcl.models of this project imported by another name, which would be a "
        "second copy of it with registries of its own: import normcl.models instead (e.g. from "
        "normcl.models.utils.norms import convert_norm); for another package named models, run Python outside the "
        "clone's folder"
    )
    works = python("from normcl.models.utils.norms import NORMS; print(' '.join(NORMS.names()))", cwd=REPO)
    assert works.returncode == 0 and "AdaB2N" in works.stdout.split(), works.stderr


@pytest.mark.slow
def test_an_installed_package_of_a_clone_folders_name_imports_outside_the_clone(tmp_path: Path) -> None:
    """Hugging Face's ``datasets`` (the test extra installs it) is hidden by the clone's ``datasets/`` only in the
    clone's root: the refusal says so, and from any other folder the installed package imports."""
    outside = python("import datasets; print(datasets.load_dataset.__module__)", cwd=tmp_path)
    if "No module named 'datasets'" in outside.stderr:
        pytest.skip("Hugging Face's datasets is not installed (pip install -e '.[test]')")
    assert outside.returncode == 0 and outside.stdout.startswith("datasets."), outside.stderr
    inside = python("import datasets", cwd=REPO)
    assert (
        inside.stderr.strip()
        .splitlines()[-1]
        .endswith("for another package named datasets, run Python outside the clone's folder")
    )


def test_the_command_line_imports_no_torch() -> None:
    """``utils/main.py``'s parser, resolution and stacking rules, and ``run.py``'s launcher, import no torch (the
    registries load their components, and torch with them, when a name is first looked up)."""
    modules = ["normcl.utils.args", "normcl.utils.parser", "normcl.utils.member_args", "normcl.utils.experiments.cli"]
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = python(code, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
