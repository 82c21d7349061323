"""The project's commands and the argument parser they share.

Each command is one ``main`` that runs under three names: installed (``[project.scripts]`` of ``pyproject.toml``,
e.g. ``normcl-run``), as the clone's script (``python utils/main.py``) and as a module (``python -m
normcl.utils.main``). Its usage line names the one that was run (:func:`program`).

:class:`CommandParser` answers bad input with one line and exit code 2, without the usage block, which ``--help``
keeps: an unknown flag names the nearest ones (``did you mean --buffer_size?``).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NoReturn


@dataclass(frozen=True)
class Command:
    """A command: its installed name, the module the clone runs as its script, and that script as typed."""

    name: str
    module: str
    script: str


COMMANDS = {
    c.name: c
    for c in (
        Command("normcl-run", "normcl.utils.main", "python utils/main.py"),
        Command("normcl-grid", "normcl.run", "python run.py"),
        Command("normcl-report", "normcl.utils.report", "python -m utils.report"),
    )
}
"""Every installed command (``pyproject.toml``'s ``[project.scripts]`` names these, tests/test_commands.py checks)."""

WANDB_PROJECT = "normcl"
"""The wandb project of a run and of a grid's runs (both commands' ``--wandb_project`` default)."""


def program(name: str) -> str:
    """How the user started command ``name``: ``python -m MODULE`` or ``python SCRIPT`` when the clone's module or
    script is the running program, else the installed command (also when a program calls ``main`` itself)."""
    command = COMMANDS[name]
    running = sys.modules.get("__main__")
    spec = getattr(running, "__spec__", None)
    if spec is not None and spec.name in (command.module, command.module.removeprefix("normcl.")):
        return f"python -m {spec.name}"
    script = getattr(running, "__file__", None)
    origin = find_spec(command.module).origin
    if script and origin and Path(script).resolve() == Path(origin).resolve():
        return f"python {sys.argv[0]}"
    return name


def nearest(name: str, known: Iterable[str]) -> list[str]:
    """The known names closest to a misspelt ``name``: ``difflib``'s close matches (best first; none when nothing
    is close), those as close as the best one but for a margin of 0.1."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    ratios = [difflib.SequenceMatcher(None, name, match).ratio() for match in close]
    return [match for match, ratio in zip(close, ratios, strict=True) if ratio >= ratios[0] - 0.1]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``name`` and the nearest known names: ``--bufer_size (did you mean --buffer_size?)``; ``name`` alone when
    nothing is close."""
    close = nearest(name, known)
    return f"{name} (did you mean {' or '.join(close)}?)" if close else name


class CommandParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (``error: ...``, exit code 2) naming the fix, without the usage block;
    ``--help`` shows the usage and every flag. ``command``: the name in :data:`COMMANDS`, which sets the usage line's
    program and says the command's other names below the flags."""

    def __init__(self, command: str, **kwargs: Any) -> None:
        other = COMMANDS[command]
        names = f"{other.name} (installed), {other.script} (in a clone) and python -m {other.module} are one command"
        super().__init__(prog=program(command), epilog=names, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace

    def unrecognized(self, extras: Sequence[str]) -> str:
        """``unknown flag --bufer_size (did you mean --buffer_size?); PROG --help lists the flags``, every unknown
        flag named; a stray value that no flag takes is named as such."""
        flags = [token.split("=", 1)[0] for token in extras if token.startswith("-")]
        if not flags:
            return f"unexpected argument {' '.join(extras)}: no flag takes it"
        known = [s for s in self._option_string_actions if s.startswith("--")]
        unknown = ", ".join(did_you_mean(flag, known) for flag in flags)
        return f"unknown flag{'s' if len(flags) > 1 else ''} {unknown}; {self.prog} --help lists the flags"

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag, still accepted: it sets the new flag's ``dest`` to ``const`` and says so in one
    line on stderr. Hidden from ``--help``."""

    def __init__(self, option_strings: Sequence[str], dest: str, instead: str, const: Any = 1, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        print(f"warning: {option} is deprecated; use {self.instead}", file=sys.stderr)
        setattr(namespace, self.dest, self.const)
