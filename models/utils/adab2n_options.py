"""AdaB²N's command-line options (Lyu et al., NeurIPS 2023, arXiv 2310.08855), declared without torch: ``adab2n.py``
registers the norm with them (defaults from its builder's signature), the launcher searches the ones it sets per run
and the report names a configuration by them (``utils/experiments/methods.Config``)."""

from __future__ import annotations

from normcl.utils.core.options import Option, at_least, between

KAPPA = Option(
    "--kappa",
    "momentum adaptation in [0, 1] (1 = plain EMA, 0 = cumulative)",
    type=float,
    check=between(0, 1),
    launcher="--kappas",
    symbol="κ",
)
RENORM = Option("--adab2n_renorm", "renormalise the task weights over the tasks present in the batch", keyword="renorm")
LAMBD = Option(
    "--lambd",
    "weight of the statistics regulariser in the loss",
    type=float,
    check=at_least(0),
    launcher="--lambdas",
    symbol="λ",
)
ADA_T0 = Option(
    "--ada_t0",
    "first task (0-based) whose loss has the regulariser",
    type=int,
    check=at_least(0),
    launcher="--ada_t0s",
    symbol="t0",
    label="ada",  # the reference's run names: AdaB2N_kappa0.4_lambd0.1_ada1
)
OPTIONS = (KAPPA, RENORM, LAMBD, ADA_T0)
SEARCHED = tuple(option for option in OPTIONS if option.launcher)
"""AdaB²N's configuration: the options ``run.py`` sets per run, searched over a grid and selected per column."""
PER_MEMBER = frozenset(option.keyword for option in SEARCHED)
"""The options stacked members may differ in: each keeps its own (``--adab2n_renorm`` shapes every member alike)."""
