"""Every file a run leaves, named in one place, and the version of the results schema.

It imports nothing heavy, so that ``utils/main.py``, the launcher (``run.py``), the report and the tests name the
same files cheaply: the results file (mammoth's layout), the partial results of a run stopped by a non-finite loss,
the checkpoint of a run alone and of a stack (named after its first member), the launcher's lock beside the results,
and the launcher's logs of a run and of a stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESULTS_FORMAT_VERSION = 1
"""The ``format_version`` of results files (``utils/results.py`` documents the schema)."""
PARTIAL_SUFFIX = ".partial.json"
"""Replaces ``.json`` in the name of a run that diverged: never the final name, so nothing mistakes it for one."""
STACK_LOG_SUFFIX = ".stack.txt"
"""A stack's log is named after its first member, as its checkpoint (``FIRST.stack.ckpt``)."""


def results_file(args: Any) -> Path:
    """``{results_path}/{setting}/{dataset}/{model}/{run_name}.json``, mammoth's folder layout (``args``: parsed
    flags, or any object with those attributes)."""
    return Path(args.results_path) / args.setting / args.dataset / args.model / f"{args.run_name}.json"


def partial_results_file(results: Path) -> Path:
    """Where a run that failed (non-finite loss) leaves the results it had: never the final name."""
    return results.with_name(results.stem + PARTIAL_SUFFIX)


def checkpoint_file(results: Path, stack: bool = False) -> Path:
    """The checkpoint of the run whose results file is ``results`` (same folder, ``.ckpt``); a stack's is named
    after its first member's (``.stack.ckpt``), so a run alone never takes it for its own."""
    return results.with_suffix(".stack.ckpt" if stack else ".ckpt")


def lock_file(results: Path) -> Path:
    """The launcher's hidden lock next to the results file: resume and the lock key on the same path."""
    return results.parent / f".{results.name}.lock"


def log_file(logdir: Path, name: str) -> Path:
    """The launcher's log of run ``name``."""
    return logdir / f"{name}.txt"


def stack_log_file(first_log: Path, first_name: str) -> Path:
    """The launcher's log of a stack, after its first member's log and name."""
    return first_log.with_name(first_name + STACK_LOG_SUFFIX)
