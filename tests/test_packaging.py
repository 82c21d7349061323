"""Installing the project adds one importable name, ``normcl``, and leaves other distributions alone (issue 25).

In a fresh virtual environment, a stand-in distribution named ``datasets`` (as Hugging Face's) is installed first;
then ``pip install`` of a clean copy of this repository (as ``pip install git+URL`` would, and editable, as
``scripts/setup.sh`` does), with real pip and setuptools: site-packages gains ``normcl`` and its metadata and no other
name, the stand-in's files stay intact and importable, ``import normcl`` works from another folder, and ``pip
uninstall normcl`` leaves the stand-in as it was. The installed copy holds every module of the repository's packages
and trains with the running interpreter's torch. Offline: pip, setuptools and the dependencies are the running
interpreter's.

Then the install as a user has it (issue 37): Hugging Face's real ``datasets`` (from PyPI: these tests need it
reachable) and a non-editable install beside it, whose commands work from a folder outside any clone: a run
(``normcl-run``), a two-run grid (``normcl-grid``), the report (``normcl-report``) and the Avalanche example
(``python -m normcl.examples.avalanche_adab2n``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path

import pytest
from venv_helpers import PROJECT_NAMES, REPO, bare_venv, see_running_site_dirs

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

MARKER = "the stand-in datasets distribution"


def sh(*argv: str | Path, cwd: Path) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def clean_copy(destination: Path) -> Path:
    """The repository's files as git sees them (tracked, and new ones it does not ignore), without build outputs."""
    listed = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def fresh_venv(root: Path) -> tuple[Path, Path]:
    """A virtual environment without the system's packages, whose pip and setuptools are the running interpreter's
    (links in a folder of its own on its path, so that its site-packages holds only what the test installs)."""
    python, purelib = bare_venv(root)
    tools = root / "tools"
    tools.mkdir()
    for name in ("pip", "setuptools", "_distutils_hack", "pkg_resources"):
        spec = find_spec(name)
        if spec is not None and spec.origin is not None:
            (tools / name).symlink_to(Path(spec.origin).parent)
    metadata = Path(distribution("setuptools")._path)  # type: ignore[attr-defined]  (its commands are entry points)
    (tools / metadata.name).symlink_to(metadata)
    (purelib / "build_tools.pth").write_text(f"{tools}\n")
    return python, purelib


def pip(python: Path, *argv: str | Path, cwd: Path) -> str:
    quiet = ["--disable-pip-version-check", "--no-input", "-q"]
    return sh(python, "-m", "pip", *argv[:1], *quiet, *argv[1:], cwd=cwd)


def stand_in(root: Path) -> Path:
    project = root / "stand-in"
    (project / "datasets").mkdir(parents=True)
    (project / "datasets" / "__init__.py").write_text(f"MARKER = {MARKER!r}\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "datasets"\nversion = "9.0"\n\n[tool.setuptools]\npackages = ["datasets"]\n'
    )
    return project


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_the_install_adds_normcl_alone_and_leaves_a_datasets_distribution_intact(
    editable: bool, tmp_path: Path
) -> None:
    python, purelib = fresh_venv(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    offline = ["--no-index", "--no-build-isolation", "--no-deps"]
    pip(python, "install", *offline, stand_in(tmp_path), cwd=elsewhere)
    stand_in_file = purelib / "datasets" / "__init__.py"
    before = top_level(purelib)
    assert stand_in_file.read_text() == f"MARKER = {MARKER!r}\n"

    clone = clean_copy(tmp_path / "clone")
    pip(python, "install", *offline, *(["-e"] if editable else []), clone, cwd=elsewhere)
    added = top_level(purelib) - before
    expected = {"normcl-0.1.0.dist-info"}
    expected |= {"__editable__.normcl-0.1.0.pth", "__editable___normcl_0_1_0_finder.py"} if editable else {"normcl"}
    assert added == expected
    assert stand_in_file.read_text() == f"MARKER = {MARKER!r}\n"
    code = "import datasets, normcl; print(datasets.MARKER); print(normcl.__file__)"
    marker, location = sh(python, "-c", code, cwd=elsewhere).splitlines()
    assert marker == MARKER
    assert Path(location) == (clone if editable else purelib / "normcl") / "__init__.py"
    for name in PROJECT_NAMES:
        if name != "datasets":
            assert find_in(python, name, elsewhere) is None, f"'{name}' is importable as a top-level name"

    pip(python, "uninstall", "-y", "normcl", cwd=elsewhere)
    assert top_level(purelib) == before
    assert sh(python, "-c", "import datasets; print(datasets.MARKER)", cwd=elsewhere).strip() == MARKER


def top_level(purelib: Path) -> set[str]:
    """What site-packages holds, but the byte-code cache (of the editable finder module, say)."""
    return set(os.listdir(purelib)) - {"__pycache__"}


def find_in(python: Path, name: str, cwd: Path) -> str | None:
    code = f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin if s else '')"
    return sh(python, "-c", code, cwd=cwd).strip() or None


def test_the_installed_package_holds_every_module_and_trains(tmp_path: Path) -> None:
    """``pip install .``: every ``.py`` file of the repository's packages (the folders with an ``__init__.py``, but
    tests/) is installed, and the installed copy registers its components and runs ``python -m normcl.utils.main``."""
    python, purelib = fresh_venv(tmp_path)
    clone = clean_copy(tmp_path / "clone")
    packages = [p.parent for p in clone.rglob("__init__.py") if "tests" not in p.relative_to(clone).parts]
    shipped = {p.relative_to(clone) for folder in packages for p in folder.glob("*.py")}
    pip(python, "install", "--no-index", "--no-build-isolation", "--no-deps", clone, cwd=tmp_path)
    installed = {p.relative_to(purelib / "normcl") for p in (purelib / "normcl").rglob("*.py")}
    assert installed == shipped
    see_running_site_dirs(purelib)
    env = {**os.environ, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    code = "import normcl; print(normcl.__file__); print(' '.join(normcl.NORMS.names()))"
    proc = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    location, norms = proc.stdout.splitlines()
    assert Path(location) == purelib / "normcl" / "__init__.py" and "AdaB2N" in norms.split()
    argv = ["--dataset", "seq-fmnist", "--model", "sgd", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "4"]
    argv += ["--samples_per_class", "10", "--validation", "1", "--num_threads", "1", "--nowand", "1", "--seed", "0"]
    main = [python, "-m", "normcl.utils.main", *argv, "--results_path", str(tmp_path / "res"), "--non_verbose", "1"]
    proc = subprocess.run(main, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "res").rglob("*.json"))) == 1


# ---------------------------------------------------------------- the commands of an install (issue 37)

QUICK = "--samples_per_class 10 --test_samples_per_class 5 --nf 4 --num_threads 1 --non_verbose 1"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A fresh virtual environment with Hugging Face's real ``datasets`` (from PyPI, the version the running
    interpreter has, whose dependencies it lends) and then ``pip install .`` of a clean copy: its ``bin`` folder, a
    folder outside any clone to run from, and the environment of the commands (no downloads, no wandb)."""
    root = tmp_path_factory.mktemp("installed")
    python, purelib = fresh_venv(root)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    try:
        hugging_face = distribution("datasets").version
    except PackageNotFoundError:
        pytest.fail("Hugging Face's datasets is not installed here: pip install -e '.[test]' (.ci/run does)")
    pip(python, "install", "--no-deps", "--ignore-installed", f"datasets=={hugging_face}", cwd=elsewhere)
    before = files_of(purelib / "datasets")
    pip(python, "install", "--no-index", "--no-build-isolation", "--no-deps", clean_copy(root / "clone"), cwd=elsewhere)
    assert files_of(purelib / "datasets") == before, "installing normcl changed Hugging Face's datasets"
    see_running_site_dirs(purelib)
    env = {**os.environ, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    code = "import datasets, normcl; print(datasets.__file__, hasattr(datasets, 'load_dataset'), normcl.__file__)"
    hf, api, ours = sh(python, "-c", code, cwd=elsewhere).split()
    assert Path(hf) == purelib / "datasets" / "__init__.py" and api == "True"
    assert Path(ours) == purelib / "normcl" / "__init__.py"
    return python.parent, elsewhere, env


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.py"))}


def command(
    bin_dir: Path, cwd: Path, env: dict[str, str], program: str, *argv: str
) -> subprocess.CompletedProcess[str]:
    """``program`` (a command of the install, or its ``python``) with ``argv``, which must succeed."""
    proc = subprocess.run([bin_dir / program, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{program} {' '.join(argv)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_run_a_two_run_grid_and_the_report_work_by_their_commands(installed: tuple[Path, Path, dict]) -> None:
    bin_dir, elsewhere, env = installed
    for name in ("normcl-run", "normcl-grid", "normcl-report"):
        assert command(bin_dir, elsewhere, env, name, "--help").stdout.startswith(f"usage: {name} ")
    flags = ["--dataset", "seq-fmnist", "--model", "sgd", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--seed", "0"]
    run = command(
        bin_dir, elsewhere, env, "normcl-run", *flags, "--nowand", "1", "--results_path", "one", *QUICK.split()
    )
    assert "data: seq-fmnist read train-images-idx3-ubyte" in run.stdout
    assert len(list((elsewhere / "one").rglob("*.json"))) == 1
    grid = ["--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "GN", "--buffer_sizes", "200"]
    grid += ["--num_seeds", "1", "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0", "--nowand", "--yes"]
    command(
        bin_dir, elsewhere, env, "normcl-grid", *grid, "--extra", QUICK, "--results_path", "grid", "--logdir", "logs"
    )
    assert len(list((elsewhere / "grid").rglob("*.json"))) == 2
    report = command(bin_dir, elsewhere, env, "normcl-report", "grid", "--no_plots").stdout
    assert (
        "| BN (separate) |" in report
        and "| GN (separate) |" in report
        and (elsewhere / "grid" / "report" / "report.md").is_file()
    )


def test_the_avalanche_example_runs_from_the_install(installed: tuple[Path, Path, dict]) -> None:
    pytest.importorskip("avalanche", minversion="0.6")
    bin_dir, elsewhere, env = installed
    argv = ["--strategy", "naive", "--samples_per_class", "4", "--test_samples_per_class", "2", "--nf", "4"]
    proc = command(bin_dir, elsewhere, env, "python", "-m", "normcl.examples.avalanche_adab2n", *argv)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["strategy"] == "naive" and summary["tasks_completed"] == 5 and summary["adab2n_layers"] == 20
