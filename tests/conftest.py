"""The suite tests this clone, which the interpreter must import as ``normcl`` (``pip install -e .`` here, as
``scripts/setup.sh`` does); another clone's install would pass or fail for that clone's code."""

from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    spec = find_spec("normcl")
    imported = None if spec is None or spec.origin is None else Path(spec.origin).resolve().parent
    if imported != REPO:
        raise pytest.UsageError(
            f"this interpreter imports normcl from {imported or 'nowhere'}, not from this clone {REPO}: "
            f"pip install -e {REPO} (scripts/setup.sh), or run the tests in an environment where it is installed"
        )
