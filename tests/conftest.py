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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``.ci/run`` spreads single tests over its workers (``--dist loadgroup``), except the tests of a module that
    share a module- or session-scoped fixture (a cached run, a built report), which stay together on one worker so
    the fixture is made once."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = [d[-1] for d in info.name2fixturedefs.values()] if info is not None else []
        if any(d.baseid and d.scope in ("module", "session") for d in defs):  # the suite's own, not pytest's
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
