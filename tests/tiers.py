"""The two tiers of the suite (issue 35): ``pytest -n 2 -m "not slow"`` is the fast loop, ``.ci/run`` runs all.

A test is ``slow`` when it trains for seconds or starts an interpreter that imports torch; a module of such tests
says so once (``pytestmark = pytest.mark.slow``), a parametrised test keeps a few smoke cases in the fast tier with
:func:`slow_but`. The fast tier still trains: a golden case, a stack of each way of stacking a norm (below), TBBN,
one step against its formula and a stack of one run by the command line's ``main``. Two kinds of interpreter stay
in it on purpose, as a user starts them: the command line's end-to-end run (``tests/test_cli.py``, the results file
it documents) and every benchmark's smoke run (``tests/test_benchmarks.py``, issue 39).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import pytest

from normcl.models.utils.norms import NORMS


def one_norm_per_stacking() -> list[str]:
    """A norm of each way the registered norms' layers stack (``models/utils/layer_stacking.py``: per channel, per
    channel with group counts scaled, LayerNorm's, AdaB²N's, ...), the first registered of each, and TBBN: a new way
    of stacking reaches the fast tier without being listed here."""
    kinds: dict[tuple[str, tuple[str, ...]], str] = {}
    for name in NORMS.names():
        stacking = NORMS.get(name).stacking
        if stacking is not None:
            kinds.setdefault((stacking.stack.__qualname__, stacking.scaled), name)
    return sorted({*kinds.values(), "TBBN"})


PARAM = type(pytest.param())
"""The type of a ``pytest.param`` (pytest does not export it)."""


def slow_but(cases: Iterable[Any], fast: Collection[Any]) -> list[Any]:
    """``cases`` (``pytest.param``s, tuples of a test's several arguments, or values of its one argument) with the
    ``slow`` mark on every one not in ``fast`` (its values: a tuple, or the value of a one-argument case). Marks and
    ids are kept; a key of ``fast`` that names no case fails at collection (a renamed case would leave the fast tier
    without it silently)."""
    params, seen = [], set()
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        param = case if isinstance(case, PARAM) else pytest.param(*values)
        key = param.values[0] if len(param.values) == 1 else param.values
        seen.add(key)
        marks = [*param.marks, *([] if key in fast else [pytest.mark.slow])]
        params.append(pytest.param(*param.values, marks=marks, id=param.id))
    if missing := [key for key in fast if key not in seen]:
        raise ValueError(f"fast-tier cases {missing} name no case: rename them with their cases")
    return params
