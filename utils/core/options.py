"""Flags and what they are: the options a component (a norm, a model, a dataset) declares in its own file, and the
declaration of any flag with its roles and its value check.

``utils/parser.py`` assembles the parser from the registries, as mammoth's ``get_parser`` per model does, so adding a
component with a hyper-parameter of its own is adding one file. An :class:`Option` is a flag plus the keyword it
sets; a norm's options take their type and default from its builder's signature (one place for each default). The
range of a value is a :data:`Check`, declared with the flag (:func:`declare`, ``Option.check``): the command line
reports a violation with the flag's wording (:func:`check_values`), library code (:func:`require`) with its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from normcl.utils.core.errors import UserError

Check = Callable[[Any], "str | None"]
"""Returns what is wrong with a value (``"must lie in [0, 1]"``), or ``None`` if it is valid."""


def at_least(low: float) -> Check:
    """Finite and ``>= low``."""
    return lambda v: None if math.isfinite(v) and v >= low else f"must be >= {low:g}"


def positive(v: float) -> str | None:
    """Finite and ``> 0``."""
    return None if math.isfinite(v) and v > 0 else "must be positive"


def between(low: float, high: float) -> Check:
    """In the closed interval ``[low, high]``."""
    return lambda v: None if math.isfinite(v) and low <= v <= high else f"must lie in [{low:g}, {high:g}]"


def above_up_to(low: float, high: float) -> Check:
    """In the interval ``(low, high]``."""
    return lambda v: None if math.isfinite(v) and low < v <= high else f"must lie in ({low:g}, {high:g}]"


def one_of(*choices: str) -> Check:
    """One of the strings ``choices`` (an option whose values are names)."""
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def require(name: str, value: Any, check: Check) -> None:
    """Library side of a check: ``ValueError("kappa must lie in [0, 1], got 2")``."""
    try:
        problem = check(value)
    except TypeError:  # not a number at all
        problem = "must be a number"
    if problem is not None:
        raise ValueError(f"{name} {problem}, got {value!r}")


def binary(text: str) -> int:
    """A 0/1 flag value (binary flags accept ``--flag`` and ``--flag 1``)."""
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"invalid choice: '{text}' (choose from 0, 1)")
    return int(text)


BINARY_FLAG: dict[str, Any] = {"type": binary, "nargs": "?", "const": 1, "metavar": "{0,1}"}
"""``add_argument`` keywords of a binary flag: ``--flag``, ``--flag 1`` and ``--flag 0``."""


_MISSING = object()


@dataclass(frozen=True)
class Roles:
    """What a flag is besides its value, declared with the flag (``utils/parser.py`` gathers them): ``resume_free``,
    it may change when an interrupted run resumes (it changes no number); ``member_free``, stacked runs
    (``--member``) may differ in it; ``protocol``, it is part of a report cell's identity (runs that differ in it are
    never averaged); ``launcher``, ``run.py`` sets it per run, so ``--extra`` may not, and this says what to use
    instead; ``stated``, ``(position, flag)``: a results page states the value its runs share in its protocol line, at
    this position, as this flag gives it (``--bs 10`` for ``batch_size``)."""

    resume_free: bool = False
    member_free: bool = False
    protocol: bool = False
    launcher: str | None = None
    stated: tuple[int, str] | None = None


RESUME_FREE = Roles(resume_free=True)
PROTOCOL = Roles(protocol=True)
NO_ROLES = Roles()


def declare(
    group: argparse._ActionsContainer, flag: str, roles: Roles = NO_ROLES, check: Check | None = None, **kwargs: Any
) -> argparse.Action:
    """``add_argument`` with what the flag is besides its value: its :class:`Roles` and its value's :data:`Check`,
    kept on the action (read back by ``utils/parser.flag_roles`` and :func:`check_values`)."""
    action = group.add_argument(flag, **kwargs)
    action.roles, action.check = roles, check  # type: ignore[attr-defined]
    return action


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every declared check on the parsed values (each value of a list), in the flag's wording: ``--kappa must lie in
    [0, 1], got 2.0``; raises ``UserError``."""
    for action in parser._actions:
        check, value = getattr(action, "check", None), getattr(args, action.dest, None)
        if check is None or value is None:
            continue
        problem = next(filter(None, map(check, value if isinstance(value, list) else [value])), None)
        if problem is not None:
            raise UserError(f"{action.option_strings[0]} {problem}, got {value}")


@dataclass(frozen=True)
class Option:
    """One flag of a component: ``--flag VALUE`` sets the component's keyword ``keyword`` (default: the flag name).

    ``type`` and ``default`` may be left out for a norm, whose builder's signature supplies them (a ``type`` given
    must be the signature's); ``bool`` becomes a binary flag. ``inactive`` is the value recorded when the run's
    component does not declare the flag (results files always record every flag); by default it is ``default``.
    ``launcher``: the ``run.py`` flag that sets it per run (:class:`Roles`). ``symbol``: how a plot's legend writes it
    (default: its name); ``label``: how a run's name writes it (default: its name). A component's option is part of
    a report cell's identity; whether stacked runs may differ in a norm's option is not the option's to say but its
    layer's stacking's (``models/utils/layer_stacking.py``).
    """

    flag: str
    help: str
    keyword: str = ""
    type: Callable[[str], Any] | None = None
    default: Any = _MISSING
    check: Check | None = None
    inactive: Any = _MISSING
    launcher: str | None = None
    symbol: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if not self.flag.startswith("--"):
            raise ValueError(f"an option's flag starts with '--', got {self.flag!r}")
        if not self.keyword:
            object.__setattr__(self, "keyword", self.dest)

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (and the key in a results file's ``args``)."""
        return self.flag[2:]

    @property
    def resolved(self) -> bool:
        return self.type is not None and self.default is not _MISSING

    @property
    def value_when_inactive(self) -> Any:
        return self.default if self.inactive is _MISSING else self.inactive

    def from_signature(self, function: Callable[..., Any]) -> Option:
        """This option with the type and default of ``function``'s keyword ``self.keyword``."""
        parameter = inspect.signature(function).parameters.get(self.keyword)
        if parameter is None:
            raise TypeError(f"{self.flag} sets the keyword {self.keyword!r}, which {function.__name__}() does not take")
        hint = typing.get_type_hints(function).get(self.keyword, self.type)
        default = self.default if parameter.default is inspect.Parameter.empty else parameter.default
        if hint is None or default is _MISSING:
            raise TypeError(f"{function.__name__}() must give {self.keyword!r} a type and a default for {self.flag}")
        if self.type is not None and self.type is not hint:
            raise TypeError(f"{self.flag} declares the type {self.type}, {function.__name__}() annotates {hint}")
        if hint is bool:  # a binary flag: recorded as 0 / 1, as the framework's own binary flags
            return dataclasses.replace(self, type=binary, default=int(default))
        return dataclasses.replace(self, type=hint, default=default)

    def command_value(self, value: Any) -> Any:
        """The parsed value as the component receives it (binary flags as ``bool``)."""
        return bool(value) if self.type is binary else value


def merge(declared: Iterable[tuple[str, Option]]) -> dict[str, list[tuple[str, Option]]]:
    """Options by flag, with the components that declare them; components sharing a flag must agree on its kind."""
    by_flag: dict[str, list[tuple[str, Option]]] = {}
    for owner, option in declared:
        same = by_flag.setdefault(option.flag, [])
        if same and (same[0][1].type, same[0][1].value_when_inactive) != (option.type, option.value_when_inactive):
            raise TypeError(f"{owner} and {same[0][0]} declare {option.flag} with different types or inactive values")
        same.append((owner, option))
    return by_flag
