"""The command line and the output every benchmark shares: ``--smoke``, and JSON lines on stdout, each with the
script's ``KEYS`` and ``ENVIRONMENT``, the result last (``tests/test_benchmarks.py`` holds every script to that).

Imports no torch: the scripts that time other processes (``end_to_end.py``, ``stack.py``) do not load it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

ENVIRONMENT = (
    "date",
    "device",
    "threads",
    "torch",
    "cpu",
    "cpu_capability",
    "kernel_limits",
    "git_commit",
    "git_dirty",
)
"""What a figure was measured on, in every output line: the ISO time, the device (the GPU's name on CUDA; a run's
``--device`` where a script reads it from the run's results file), torch's CPU threads, torch's version, the CPU's
model, the kernel set torch dispatches to (``get_cpu_capability()``), any limit set on the kernels, and the code
(in process: ``benchmarks/common.py``'s ``environment``, from ``normcl.utils.results``' ``cpu_environment`` and
``code_version``; of another process: ``run_environment``)."""


def parse(p: argparse.ArgumentParser, smoke: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``p``'s arguments, with ``--smoke`` added: the arguments ``smoke`` (tiny sizes: a run of seconds through the
    whole measurement, for the tests) before the given ones, which win."""
    help_text = f"a check of seconds that the script runs: {smoke}"
    p.add_argument("--smoke", action="store_true", help=help_text)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--smoke", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    return p.parse_args([*shlex.split(smoke), *argv] if first.parse_known_args(argv)[0].smoke else argv)


def run_environment(results: dict[str, Any]) -> dict[str, Any]:
    """``ENVIRONMENT`` of the process that wrote the results file ``results`` (``normcl.utils.results``)."""
    return {key: results["created"] if key == "date" else results["environment"][key] for key in ENVIRONMENT}


def emit(row: dict[str, Any]) -> None:
    """One output line: ``row`` as JSON, at once (a caller's timeout keeps the lines printed before it)."""
    print(json.dumps(row), flush=True)
