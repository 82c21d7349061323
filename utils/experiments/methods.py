"""The vocabulary that ``run.py`` and the report share: methods (order, colour), pseudo-methods, AdaB²N's configuration,
names.

The launcher turns a method into ``utils/main.py`` flags and the report turns a run's recorded arguments back into
its row (:func:`method_of`); both directions are defined here from the same table, so a grid run is always reported
in the row it was started for, whichever launcher ran it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

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

NO_AFFINE_METHODS = frozenset({"CN"})
"""Norms that always run without affine parameters, as in the reference launcher (and the official CN code, whose
optimiser has none): the launcher adds ``--no_affine 1`` and the report does not mark their rows ``-noaffine``."""
RENORM_SUFFIX = "-renorm"
NO_AFFINE_SUFFIX = "-noaffine"

SAFE_CHARACTERS = "A-Za-z0-9._+-"
"""What run names and file names keep; anything else is replaced."""

GridKey = tuple[str, str, int | None]
"""A column of the paper's table, ``(dataset, model, buffer size)``: AdaB²N's configuration is chosen per column."""


def method_of(args: Mapping[str, Any]) -> str:
    """The row of a run: its ``--nl``, ``-renorm`` for renormalised AdaB²N, ``-MODE`` for an explicit
    ``--forward_mode``, ``-noaffine`` for ``--no_affine`` (except :data:`NO_AFFINE_METHODS`, which always run so).
    It reads the arguments, not the run name, so runs of any launcher are grouped alike."""
    norm = str(args.get("nl", "BN"))
    name = norm
    if norm == ADAPTIVE_NORM and args.get("adab2n_renorm"):
        name += RENORM_SUFFIX
    if args.get("forward_mode"):
        name += f"-{args['forward_mode']}"
    if args.get("no_affine") and norm not in NO_AFFINE_METHODS:
        name += NO_AFFINE_SUFFIX
    return name


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
    return norm_of(method) in NO_AFFINE_METHODS


def method_key(method: str) -> tuple[int, str]:
    """Sort key of the report's rows: :data:`METHOD_ORDER`, then the other methods alphabetically."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure: its own, or one drawn from its name (the same in every run)."""
    return METHOD_COLOURS.get(method) or OTHER_COLOURS[zlib.crc32(method.encode()) % len(OTHER_COLOURS)]


def number(value: float) -> str:
    """Floats as the reference's names print them (0.1, 1.0, 1e-05): the same value always gives the same name."""
    return repr(float(value))


class Config(NamedTuple):
    """An AdaB²N configuration. A tuple, so a plain ``(0.4, 0.1, 0)`` compares, sorts and looks up the same."""

    kappa: float
    lambd: float
    ada_t0: int

    @classmethod
    def of(cls, args: Mapping[str, Any]) -> Config | None:
        """A run's configuration from its recorded arguments; ``None`` unless it ran AdaB²N."""
        if args.get("nl") != ADAPTIVE_NORM:
            return None
        return cls(float(args["kappa"]), float(args["lambd"]), int(args["ada_t0"]))

    def values(self) -> tuple[str, str, str]:
        """The fields as run names, flags and messages print them (floats by :func:`number`)."""
        return number(self.kappa), number(self.lambd), str(self.ada_t0)

    def flags(self) -> list[str]:
        """``--kappa K --lambd L --ada_t0 T`` for ``utils/main.py``."""
        named = zip(self._fields, self.values(), strict=True)
        return [token for name, value in named for token in (f"--{name}", value)]

    def text(self) -> str:
        """``kappa 0.4, lambd 0.1, ada_t0 0``: the launcher's messages."""
        return ", ".join(f"{name} {value}" for name, value in zip(self._fields, self.values(), strict=True))

    def legend(self) -> str:
        """``κ=0.4, λ=0.1, t0=0``: short enough for a plot legend."""
        return f"κ={self.kappa:g}, λ={self.lambd:g}, t0={self.ada_t0}"


def safe_name(text: str) -> str:
    """``text`` with each character outside :data:`SAFE_CHARACTERS` replaced by ``-`` (run names)."""
    return re.sub(f"[^{SAFE_CHARACTERS}]", "-", text)


def slug(text: str) -> str:
    """``text`` with each run of characters outside :data:`SAFE_CHARACTERS` replaced by ``_`` (plot file names)."""
    return re.sub(f"[^{SAFE_CHARACTERS}]+", "_", text).strip("_")


def method_label(method: str, config: Config | None = None) -> str:
    """``AdaB2N_kappa0.4_lambd0.1_ada1`` for an AdaB²N configuration, else the method itself (as the reference)."""
    if config is None:
        return method
    kappa, lambd, ada_t0 = config.values()
    return f"{method}_kappa{kappa}_lambd{lambd}_ada{ada_t0}"


def run_name(dataset: str, epochs: int, model: str, buffer: int | None, label: str, seed: int, mode: str) -> str:
    """The reference's run name: dataset, epochs, model, buffer, method (+ AdaB²N hyper-parameters), seed, mode."""
    buf = "none" if buffer is None else str(buffer)
    return safe_name(f"{dataset}_ep{epochs}_{model}_buf{buf}_{label}_seed{seed}_{mode}")


def column_label(key: GridKey) -> str:
    """A column as the report labels it: ``seq-fmnist er_ace 200`` (no buffer size for models without one)."""
    dataset, model, buffer = key
    return f"{dataset} {model}" + ("" if buffer is None else f" {buffer}")
