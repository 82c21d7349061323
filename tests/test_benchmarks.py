"""Every benchmark runs, and says what it measured as docs/benchmarks.md documents it (issue 39).

Each Python script in ``benchmarks/`` (every file but the modules the scripts share, ``LIBRARY``, where a new shared
module goes) runs as its own process with ``--smoke`` (tiny sizes: seconds) and must exit 0 and print JSON lines
with exactly its keys (its ``KEYS``) and the environment's (``benchmarks/output.py``, ``ENVIRONMENT``);
docs/benchmarks.md's table of the scripts' output and each script's docstring name the same keys. The shell scripts that
run the benchmarks for their figures (``gpu.sh`` on a lent GPU, ``cpu.sh`` on the CPU) parse, and run on this
machine with an interpreter that records each command instead of running it: every benchmark command they would send
is accepted by that script's parser, every test file they name exists, and every benchmark they name is called
(gpu.sh's grid parts, GRID and FULLDATA, start scripts/reproduce_fmnist.sh and are not run here).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from normcl.benchmarks.output import ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
LIBRARY = ("__init__.py", "common.py", "output.py")
"""The modules of ``benchmarks/`` that are not scripts (the scripts import them)."""
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in LIBRARY)
SHELL_SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.sh"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NORMCL_OFFLINE": "1", "WANDB_SILENT": "true"}
# One row of docs/benchmarks.md's table: | `script.py` (or: every line) | `key`, `key`, ... |
DOCUMENTED_ROW = re.compile(r"^\| (`\w+\.py`|every line) \| ((?:`\w+`(?:, )?)+) \|$")


def script_module(script: str) -> ModuleType:
    return importlib.import_module(f"normcl.benchmarks.{script.removesuffix('.py')}")


def documented_keys() -> dict[str, list[str]]:
    """docs/benchmarks.md's table: each script's keys, and the environment's under ``every line``."""
    rows = {}
    for line in (REPO / "docs" / "benchmarks.md").read_text().splitlines():
        if match := DOCUMENTED_ROW.match(line):
            rows[match[1].strip("`")] = re.findall(r"`(\w+)`", match[2])
    return rows


def test_the_folder_holds_scripts_of_each_kind() -> None:
    """The enumeration below sees the scripts (a moved folder or a changed suffix would make the tests vacuous)."""
    assert {"step_time.py", "end_to_end.py"} <= set(SCRIPTS)
    assert {"gpu.sh", "cpu.sh"} <= set(SHELL_SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_smoke_run_prints_json_lines_with_the_documented_keys(script: str, tmp_path: Path) -> None:
    keys = getattr(script_module(script), "KEYS", None)
    assert keys is not None, f"benchmarks/{script} declares no KEYS, the keys of its JSON lines (output.py)"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"benchmarks/{script} --smoke exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert lines, f"benchmarks/{script} --smoke printed nothing on stdout"
    expected = {*keys, *ENVIRONMENT}
    for line in lines:
        row = json.loads(line)
        assert isinstance(row, dict), line
        missing, extra = sorted(expected - row.keys()), sorted(row.keys() - expected)
        assert not missing and not extra, f"benchmarks/{script}: keys missing {missing}, not documented {extra}"


def test_benchmarks_md_and_the_docstrings_name_each_scripts_keys() -> None:
    documented = documented_keys()
    assert documented.pop("every line") == list(ENVIRONMENT)
    assert sorted(documented) == SCRIPTS, "docs/benchmarks.md lists other scripts than benchmarks/ holds"
    for script in SCRIPTS:
        module = script_module(script)
        assert documented[script] == list(module.KEYS), f"docs/benchmarks.md's keys of {script} are not its KEYS"
        unnamed = [key for key in module.KEYS if f"``{key}``" not in module.__doc__]
        assert not unnamed, f"the docstring of benchmarks/{script} does not name {unnamed}"


@pytest.mark.parametrize("shell_script", SHELL_SCRIPTS)
def test_a_shell_script_parses(shell_script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(BENCHMARKS / shell_script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


RECORDER = """import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("{}")
"""
"""What the shell scripts run as their Python: it writes down its arguments and prints an empty JSON object."""

EVERY_PART = {
    "gpu.sh": {"TESTS": "1", "NORM": "1", "COMPILE_E2E": "1", "STACK": "1", "BENCH": "1", "GRID": "0", "FULLDATA": "0"},
    "cpu.sh": {},
}


@pytest.mark.parametrize("shell_script", SHELL_SCRIPTS)
def test_every_benchmark_command_of_a_shell_script_is_accepted(shell_script: str, tmp_path: Path) -> None:
    assert shell_script in EVERY_PART, f"name the settings that run every part of benchmarks/{shell_script} here"
    recorder, record = tmp_path / "recorder.py", tmp_path / "record.jsonl"
    recorder.write_text(RECORDER)
    env = {**ENV, **EVERY_PART[shell_script], "PYTHON": f"{sys.executable} {recorder}", "RECORD": str(record)}
    env["OUT"] = str(tmp_path / "out")
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / shell_script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    commands = [json.loads(line) for line in record.read_text().splitlines()]
    called, refused = set(), []
    for argv in commands:
        if argv[0].startswith("benchmarks/"):
            script = argv[0].removeprefix("benchmarks/")
            called.add(script)
            try:
                script_module(script).parser().parse_args(argv[1:])
            except SystemExit:
                refused.append(argv)
        elif argv[:2] == ["-m", "pytest"]:
            missing = [arg for arg in argv if arg.startswith("tests/") and not (REPO / arg).exists()]
            assert not missing, f"benchmarks/{shell_script} runs test files that do not exist: {missing}"
    assert not refused, f"benchmarks/{shell_script} sends arguments its benchmarks refuse: {refused}"
    named = set(re.findall(r"\w+\.py", (BENCHMARKS / shell_script).read_text())) & set(SCRIPTS)
    assert called == named, f"benchmarks/{shell_script} did not call {sorted(named - called)} with every part on"
