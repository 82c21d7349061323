"""Where a run stopped by a non-finite loss leaves its results: defined here, without torch, so that
``utils/main.py`` (through :mod:`utils.results`), the launcher and the report all name the same file."""

from __future__ import annotations

from pathlib import Path

PARTIAL_SUFFIX = ".partial.json"
"""Replaces ``.json`` in the name of a run that diverged: never the final name, so nothing mistakes it for one."""


def partial_results_file(results: Path) -> Path:
    """Where a run that failed (non-finite loss) leaves the results it had: never the final name."""
    return results.with_name(results.stem + PARTIAL_SUFFIX)
