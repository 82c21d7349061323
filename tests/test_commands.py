"""The commands of an install (issue 37): ``[project.scripts]`` names the commands of ``utils/core/commands.py``, each
the main of the clone's script, and a usage line names the command that was run: the installed command, the clone's
script or the module (tests/test_packaging.py runs the installed commands from a non-editable install)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from normcl.utils.core.commands import COMMANDS, program

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO = Path(__file__).resolve().parent.parent


def test_the_installed_commands_are_the_clones_scripts() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    for name, target in scripts.items():
        module, function = target.split(":")
        entry = getattr(import_module(module), function)
        assert import_module(COMMANDS[name].module).main is entry, name  # the clone's script runs it
        assert program(name) == name  # called from a program (pytest here), a command names itself as installed


@pytest.mark.parametrize(
    ("name", "argv", "cwd", "usage"),
    [
        ("normcl-run", ["utils/main.py"], "repo", "python utils/main.py"),
        ("normcl-run", [str(REPO / "utils" / "main.py")], "elsewhere", f"python {REPO / 'utils' / 'main.py'}"),
        ("normcl-run", ["-m", "utils.main"], "repo", "python -m utils.main"),
        ("normcl-run", ["-m", "normcl.utils.main"], "elsewhere", "python -m normcl.utils.main"),
        ("normcl-grid", ["run.py"], "repo", "python run.py"),
        ("normcl-grid", ["-m", "normcl.run"], "elsewhere", "python -m normcl.run"),
        ("normcl-report", ["-m", "utils.report"], "repo", "python -m utils.report"),
        ("normcl-report", ["-m", "normcl.utils.report"], "elsewhere", "python -m normcl.utils.report"),
    ],
)
def test_the_usage_line_names_the_command_that_was_run(
    name: str, argv: list[str], cwd: str, usage: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=REPO if cwd == "repo" else tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {usage} [-h]")
    command = COMMANDS[name]
    others = f"{name} (installed), {command.script} (in a clone) and python -m {command.module} are one command"
    assert others in " ".join(proc.stdout.split())  # --help names them all
