"""The vocabulary that ``run.py`` and the report share: methods (order, colour), pseudo-methods, AdaB²N's configuration,
names.

The launcher turns a method into ``utils/main.py`` flags and the report turns a run's recorded arguments back into
its row (:func:`method_of`); both directions are defined here from the same table, so a grid run is always reported
in the row it was started for, whichever launcher ran it.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from normcl.models.utils import NORMS
from normcl.models.utils.adab2n_options import SEARCHED
from normcl.utils.parser import FORWARD_MODES

ADAPTIVE_NORM = "AdaB2N"
"""The normalization whose configurations ``(kappa, lambd, ada_t0)`` are searched and selected."""
BASELINE = "BN"
"""The row every other method's paired gain is measured against."""
METHOD_COLOURS = {
    "BN": "tab:blue",
    "BN-joint": "tab:cyan",
    "LN": "tab:green",
    "IN": "tab:olive",
    "GN": "tab:orange",
    "CN": "tab:purple",
    "BRN": "tab:brown",
    "TBBN": "#e7ba52",
    "AdaB2N": "tab:red",
    "AdaB2N-renorm": "tab:pink",
}
"""Each method's colour in every figure, in the report's row order; other methods follow it alphabetically."""
METHOD_ORDER = tuple(METHOD_COLOURS)
OTHER_COLOURS = ("tab:gray", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
"""Colours of methods outside :data:`METHOD_COLOURS` (variants such as ``BN-noaffine``, new norms), by name."""
DATASET_ORDER = ("seq-cifar10", "seq-cifar100", "seq-miniimg", "seq-fmnist")
"""The report's column order: the paper's datasets, then this project's Fashion-MNIST."""

RENORM_SUFFIX = "-renorm"
NO_AFFINE_SUFFIX = "-noaffine"

GridKey = tuple[str, str, int | None]
"""A column of the paper's table, ``(dataset, model, buffer size)``: AdaB²N's configuration is chosen per column."""


def no_affine_norms() -> list[str]:
    """The registered norms that always run without affine parameters, as their declaration says (``register_norm``'s
    ``without_affine``: the reference launcher runs them so): the launcher adds ``--no_affine 1`` and the report does
    not mark their rows ``-noaffine``."""
    return [name for name in NORMS.names() if NORMS.get(name).without_affine]


def method_of(args: Mapping[str, Any]) -> str:
    """The row of a run: its ``--nl``, ``-renorm`` for renormalised AdaB²N, ``-MODE`` for an explicit
    ``--forward_mode``, ``-noaffine`` for ``--no_affine`` (except :func:`no_affine_norms`, which always run so).
    It reads the arguments, not the run name, so runs of any launcher are grouped alike."""
    norm = str(args.get("nl", "BN"))
    name = norm
    if norm == ADAPTIVE_NORM and args.get("adab2n_renorm"):
        name += RENORM_SUFFIX
    if args.get("forward_mode"):
        name += f"-{args['forward_mode']}"
    if args.get("no_affine") and norm not in no_affine_norms():
        name += NO_AFFINE_SUFFIX
    return name


def is_method(name: str) -> bool:
    """Whether ``name`` is a row :func:`method_of` gives for some registered norm and flags."""
    flags = itertools.product(NORMS.names(), (0, 1), (None, *FORWARD_MODES), (0, 1))
    return any(
        name == method_of({"nl": norm, "adab2n_renorm": renorm, "forward_mode": mode, "no_affine": no_affine})
        for norm, renorm, mode, no_affine in flags
    )


_PSEUDO_ARGS = ({"nl": "BN", "forward_mode": "joint"}, {"nl": ADAPTIVE_NORM, "adab2n_renorm": 1})
PSEUDO_METHODS: dict[str, dict[str, Any]] = {method_of(args): args for args in _PSEUDO_ARGS}
"""Methods that are a registered norm plus flags, named by :func:`method_of` itself: name -> ``utils/main.py``
arguments (``BN-joint``, ``AdaB2N-renorm``)."""


def norm_of(method: str) -> str:
    """The ``--nl`` of a method: itself, or the norm under a pseudo-method."""
    return str(PSEUDO_METHODS.get(method, {"nl": method})["nl"])


def method_flags(method: str) -> list[str]:
    """``--nl NORM`` followed by a pseudo-method's own flags, as ``utils/main.py`` takes them."""
    args = PSEUDO_METHODS.get(method, {"nl": method})
    return [token for key, value in args.items() for token in (f"--{key}", str(value))]


def runs_without_affine(method: str) -> bool:
    """Whether the launcher adds ``--no_affine 1`` to the method's runs."""
    return norm_of(method) in no_affine_norms()


def method_key(method: str) -> tuple[int, str]:
    """Sort key of the report's rows: :data:`METHOD_ORDER`, then the other methods alphabetically."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure: its own, or one drawn from its name (the same in every run)."""
    return METHOD_COLOURS.get(method) or OTHER_COLOURS[zlib.crc32(method.encode()) % len(OTHER_COLOURS)]


def number(value: float) -> str:
    """Floats as the reference's names print them (0.1, 1.0, 1e-05): the same value always gives the same name."""
    return repr(float(value))


class Config(NamedTuple("ConfigFields", [(option.dest, option.type) for option in SEARCHED])):
    """An AdaB²N configuration: its value of each option ``run.py`` searches (``adab2n_options.SEARCHED``, whose
    names are the fields). A tuple, so a plain ``(0.4, 0.1, 0)`` compares, sorts and looks up the same."""

    __slots__ = ()

    @classmethod
    def of(cls, args: Mapping[str, Any]) -> Config | None:
        """A run's configuration from its recorded arguments; ``None`` unless it ran AdaB²N."""
        if args.get("nl") != ADAPTIVE_NORM:
            return None
        return cls(*(option.type(args[option.dest]) for option in SEARCHED))

    def values(self) -> tuple[str, ...]:
        """The fields as run names, flags and messages print them (floats by :func:`number`)."""
        return tuple(number(v) if o.type is float else str(v) for o, v in zip(SEARCHED, self, strict=True))

    def flags(self) -> list[str]:
        """``--kappa K --lambd L --ada_t0 T`` for ``utils/main.py``."""
        return [token for o, value in zip(SEARCHED, self.values(), strict=True) for token in (o.flag, value)]

    def text(self) -> str:
        """``kappa 0.4, lambd 0.1, ada_t0 0``: the launcher's messages."""
        return ", ".join(f"{name} {value}" for name, value in zip(self._fields, self.values(), strict=True))

    def legend(self) -> str:
        """``κ=0.4, λ=0.1, t0=0``: short enough for a plot legend."""
        return ", ".join(f"{o.symbol or o.dest}={value:g}" for o, value in zip(SEARCHED, self, strict=True))


def method_label(method: str, config: Config | None = None) -> str:
    """``AdaB2N_kappa0.4_lambd0.1_ada1`` for an AdaB²N configuration, else the method itself (as the reference)."""
    if config is None:
        return method
    return method + "".join(f"_{o.label or o.dest}{value}" for o, value in zip(SEARCHED, config.values(), strict=True))


def column_label(key: GridKey) -> str:
    """A column as the report labels it: ``seq-fmnist er_ace 200`` (no buffer size for models without one)."""
    dataset, model, buffer = key
    return f"{dataset} {model}" + ("" if buffer is None else f" {buffer}")
