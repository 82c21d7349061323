"""The components' own flags, assembled from the registries: every option a registered norm, model or dataset
declares in its own file (``Option``, ``utils/core/options.py``), merged by flag, added to ``utils/main.py``'s parser
in one argument group per kind, and the value of one a run does not set.

A component's option is part of a report cell's identity (``Roles.protocol``), and ``run.py`` sets the ones that
name a launcher flag; whether stacked members may differ in one is its model's or its norm's stacking's to say
(``utils/member_args.member_free``). A flag that the run's component does not declare records its inactive value.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

from normcl.datasets import DATASETS
from normcl.models import MODELS
from normcl.models.utils import NORMS
from normcl.utils.core.options import BINARY_FLAG, Check, Option, Roles, binary, declare, merge

GROUP_TITLES = {
    "norm": "options of the normalization layers (--nl)",
    "model": "options of the models (--model)",
    "dataset": "options of the datasets (--dataset)",
}
"""The parser's argument group of each kind of component."""


def component_options() -> Iterator[tuple[str, str, Option]]:
    """``(kind, name, option)`` for every flag a registered norm, model or dataset declares in its own file."""
    declared = [("norm", name, NORMS.get(name).options) for name in NORMS.names()]
    declared += [("model", name, MODELS.get(name).OPTIONS) for name in MODELS.names()]
    declared += [("dataset", name, DATASETS.get(name).OPTIONS) for name in DATASETS.names()]
    for kind, name, options in declared:
        for option in options:
            if not option.resolved:
                raise TypeError(
                    f"{kind} '{name}': {option.flag} needs type= and default= (only a norm's come from its builder)"
                )
            yield kind, name, option


def merged_options() -> dict[str, list[tuple[str, Option]]]:
    """Every component option by flag, with the components that declare it (``"kind name"``, :func:`merge`)."""
    return merge((f"{kind} {name}", option) for kind, name, option in component_options())


def _every_check(options: Sequence[Option]) -> Check | None:
    """The first problem that any of the components declaring a flag finds with its value."""
    checks = [option.check for option in options if option.check is not None]
    return (lambda value: next(filter(None, (check(value) for check in checks)), None)) if checks else None


def add_component_options(parser: argparse.ArgumentParser) -> None:
    """The components' flags, one argument group per kind, each with its owners' defaults in its help and their
    checks; unset, a flag is ``None`` until :func:`fill_component_options`."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, owners in merged_options().items():
        kind = owners[0][0].split(" ", 1)[0]
        group = groups.get(kind) or groups.setdefault(kind, parser.add_argument_group(GROUP_TITLES[kind]))
        defaults = "; ".join(f"{owner.split(' ', 1)[1]}: {o.default}" for owner, o in owners)
        names = ", ".join(owner.split(" ", 1)[1] for owner, _ in owners)
        option = owners[0][1]
        kwargs = BINARY_FLAG if option.type is binary else {"type": option.type}
        roles = Roles(protocol=True, launcher=option.launcher)
        check = _every_check([o for _, o in owners])
        declare(group, flag, roles, check, default=None, help=f"{names}: {option.help} (default {defaults})", **kwargs)


def component_default(owners: list[tuple[str, Option]], chosen: set[tuple[str, str]]) -> Any:
    """An unset component flag's value: the default of the chosen component (``(kind, name)``) that declares it, else
    the inactive value; ``owners``: the flag's entry of :func:`merged_options`."""
    mine = [o for owner, o in owners if tuple(owner.split(" ", 1)) in chosen]
    return mine[0].default if mine else owners[0][1].value_when_inactive


def fill_component_options(args: argparse.Namespace) -> None:
    """Unset component flags: the run's component's default if it declares the flag, else the inactive value."""
    chosen = {("norm", args.nl), ("model", args.model), ("dataset", args.dataset)}
    for owners in merged_options().values():
        dest = owners[0][1].dest
        if getattr(args, dest) is None:
            setattr(args, dest, component_default(owners, chosen))
