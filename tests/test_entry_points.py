"""The entry points import this project even where packages named like its folders are installed (issues 17, 25).

Hugging Face's ``datasets`` is in most machine-learning environments, and ``utils`` and ``models`` are common names:
stand-in packages of those names go on PYTHONPATH and into the site-packages of a virtual environment that also sees
this project's editable install, and every entry point must still start: the project is the one package ``normcl``
and its code imports nothing else of its own. An entry point run from the clone (``python -m utils.report``) imports
its own folder's package once more under the top-level name, but nothing of the project through it: one registry
of each kind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from venv_helpers import PROJECT_NAMES, REPO, bare_venv, see_running_site_dirs

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

STAND_INS = ("datasets", "utils", "models", "backbone")


def write_stand_ins(folder: Path) -> Path:
    """Packages named like the project's, as installed distributions would bring them, with modules named like the
    project's that refuse to be imported (an installed ``utils`` may well have an ``args`` or a ``main``)."""
    for name in STAND_INS:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f'"""A stand-in for an installed {name}."""\n__version__ = "9"\n')
    for module in ("utils/main.py", "utils/args.py", "models/utils.py", "datasets/utils.py"):
        (folder / module).write_text(f'raise SystemExit("the stand-in {module} was imported")\n')
    return folder


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A Python whose site-packages and PYTHONPATH both hold the stand-ins; the project and its dependencies come
    from the running interpreter's site directories (not the system's: the suite may itself run in a venv, where
    ``system_site_packages`` would reach the base interpreter's, without torch)."""
    root = tmp_path_factory.mktemp("shadowed")
    python, purelib = bare_venv(root)
    assert purelib != Path(sysconfig.get_paths()["purelib"])
    write_stand_ins(purelib)
    see_running_site_dirs(purelib)
    env = {**os.environ, "PYTHONPATH": str(write_stand_ins(root / "pythonpath"))}
    probe = subprocess.run(
        [python, "-c", "import datasets; print(datasets.__file__)"], env=env, capture_output=True, text=True, cwd=root
    )
    assert probe.stdout.startswith(str(root / "pythonpath")), probe.stdout + probe.stderr
    return str(python), env


ENTRY_POINTS = [
    (["utils/main.py", "--help"], "elsewhere"),
    (["utils/main.py", "--help"], "repo"),
    (["run.py", "--help"], "elsewhere"),
    (["benchmarks/step_time.py", "--help"], "elsewhere"),
    (["-m", "utils.main", "--help"], "repo"),
    (["-m", "utils.report", "--help"], "repo"),
    (["-m", "utils.results_page", "--help"], "repo"),
    (["-m", "normcl.utils.main", "--help"], "elsewhere"),
    (["-m", "normcl.utils.report", "--help"], "elsewhere"),
]


@pytest.mark.parametrize(("command", "cwd"), ENTRY_POINTS)
def test_entry_points_start_beside_conflicting_packages(
    shadowed: tuple[str, dict[str, str]], command: list[str], cwd: str, tmp_path: Path
) -> None:
    python, env = shadowed
    args = command if command[0] == "-m" else [str(REPO / command[0]), *command[1:]]
    proc = subprocess.run(
        [python, "-X", "importtime", *args],
        env=env,
        cwd=REPO if cwd == "repo" else tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    outside = [name for name in imported if name.split(".")[0] in PROJECT_NAMES]
    package = [command[1].rsplit(".", 1)[0]] if command[0] == "-m" and not command[1].startswith("normcl.") else []
    assert outside == package, "project modules imported outside the package normcl"
    assert any(name.startswith("normcl.") for name in imported)


def test_a_grid_run_started_by_run_py_imports_the_project(shadowed: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    python, env = shadowed
    res = tmp_path / "res"
    argv = [
        "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "--num_seeds", "1",
        "--buffer_sizes", "200", "--nowand", "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0",
        "--extra", "--samples_per_class 20 --nf 8 --non_verbose 1 --num_threads 1 --validation 1",
        "--results_path", str(res), "--logdir", str(tmp_path / "logs"), "--yes",
    ]  # fmt: skip
    proc = subprocess.run([python, str(REPO / "run.py"), *argv], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(p.read_text() for p in tmp_path.rglob("*.txt"))
    (results,) = res.rglob("*.json")
    assert json.loads(results.read_text())["args"]["nl"] == "BN"


@pytest.mark.parametrize("script", ["utils/main.py", "run.py"])
def test_a_second_clones_script_is_refused_not_run_with_this_clones_code(tmp_path: Path, script: str) -> None:
    """A script of another copy of the project imports the installed ``normcl``, this clone: it would silently run
    code other than its own, so it stops with one line naming both copies and the fix, exit 2, nothing written."""
    other = tmp_path / "other_clone"
    for name in (script, "models/utils/adab2n.py"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_bytes((REPO / name).read_bytes())
    before = sorted(tmp_path.rglob("*"))
    proc = subprocess.run(
        [sys.executable, str(other / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert f"copy of normcl at {other}, but this Python imports normcl from {REPO}" in proc.stderr
    assert f"pip install -e {other}" in proc.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_a_program_installed_in_a_venv_inside_a_clone_is_not_taken_for_its_script(tmp_path: Path) -> None:
    """``.venv/bin/pytest`` (or submitit's job runner in its site-packages) inside a second clone is an installed
    program, not that clone's code: importing normcl from it is not refused."""
    other = tmp_path / "other_clone"
    (other / "models/utils").mkdir(parents=True)
    (other / "models/utils/adab2n.py").write_bytes((REPO / "models/utils/adab2n.py").read_bytes())
    (other / ".venv").mkdir()
    (other / ".venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    site_packages = other / ".venv/lib/python3/site-packages/tool"
    for tool in (other / ".venv/bin/tool.py", site_packages / "run.py"):
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text("import normcl\nprint(normcl.__file__)\n")
        proc = subprocess.run([sys.executable, str(tool)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert Path(proc.stdout.strip()) == REPO / "__init__.py"
