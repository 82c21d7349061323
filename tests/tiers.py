"""The two tiers of the suite (issue 35): ``pytest -n 2 -m "not slow"`` is the fast loop, ``.ci/run`` runs all.

A test is ``slow`` when it trains for seconds or starts an interpreter that imports torch; a module of such tests
says so once (``pytestmark = pytest.mark.slow``), a parametrised test keeps a few smoke cases in the fast tier with
:func:`slow_but`. The fast tier still trains: a golden case, a stack of each kind of norm (below), TBBN and the
command line in-process.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import pytest

from normcl.models.utils.norms import NORMS


def one_norm_per_stacking() -> list[str]:
    """A norm of each way the registered norms' layers stack (``models/utils/layer_stacking.py``: the per-channel
    layers, LayerNorm's, AdaB²N's, ...), the first registered of each, and TBBN: a new way of stacking reaches the
    fast tier without being listed here."""
    kinds: dict[str, str] = {}
    for name in NORMS.names():
        stacking = NORMS.get(name).stacking
        if stacking is not None:
            kinds.setdefault(stacking.stack.__qualname__, name)
    return sorted({*kinds.values(), "TBBN"})


def slow_but(cases: Iterable[Any], fast: Collection[Any]) -> list[Any]:
    """``cases`` (tuples, values or ``pytest.param``s) with the ``slow`` mark on every one not in ``fast``."""
    params = []
    for case in cases:
        values, marks = (case.values, list(case.marks)) if isinstance(case, type(pytest.param())) else (case, [])
        key = values if not isinstance(values, tuple) or len(values) != 1 else values[0]
        if key not in fast:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(*(values if isinstance(values, tuple) else (values,)), marks=marks))
    return params
