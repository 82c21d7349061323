"""The Python API (``normcl.load_runner``, ``normcl.train``, ``normcl.get_avail_args``): a run of ``utils/main.py``
from a notebook or a script, with the same parser, checks, training and results file as the command line.

    import normcl

    model, dataset = normcl.load_runner("er_ace", "seq-fmnist", {"nl": "AdaB2N", "buffer_size": 500, "lr": 0.03})
    results = normcl.train(model, dataset)  # the results document, also written to results/ as the CLI writes it

An argument is a flag's name without its dashes and its value (``True`` / ``False`` for a 0/1 flag; ``None``: the
flag's default). Bad input raises the command line's one-line :class:`~normcl.utils.core.errors.UserError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, NoReturn

from normcl.datasets import DATASETS
from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils import main
from normcl.utils.args import parse_args
from normcl.utils.component_options import component_default, merged_options
from normcl.utils.core.commands import did_you_mean
from normcl.utils.core.errors import UserError
from normcl.utils.parser import MEMBER_FLAG, build_parser, help_of

NOT_ARGUMENTS = ("help", MEMBER_FLAG[2:])
"""Flags of the command line that are no argument of one run: ``--help``, and ``--member`` (stacks are the CLI's)."""


def _raise(message: str) -> NoReturn:
    raise UserError(message) from None  # argparse calls it while handling its own errors: no chain behind the line


def _parser() -> argparse.ArgumentParser:
    """The command line's parser, raising its errors (``argparse`` would print them and exit)."""
    parser = build_parser()
    parser.error = _raise  # type: ignore[method-assign]
    return parser


def _argv(model: str, dataset: str, args: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    argv = ["--model", model, "--dataset", dataset]
    for name, value in args.items():
        if name in ("model", "dataset"):
            raise UserError(f"pass the {name} as load_runner's own argument, not in args")
        if name == MEMBER_FLAG[2:]:
            raise UserError(f"load_runner trains one run; stacks ({MEMBER_FLAG}) are the command line's")
        if name not in flags:
            raise UserError(f"unknown argument {did_you_mean(repr(name), map(repr, flags))}; normcl.get_avail_args() "
                            "lists them")  # fmt: skip
        if value is not None:
            text = str(int(value)) if isinstance(value, bool) else str(value)
            argv.append(f"{flags[name]}={text}")  # one token: a value may start with a dash (run_name "-ablation")
    return argv


def load_runner(model: str, dataset: str, args: Mapping[str, Any]) -> tuple[ContinualModel, ContinualDataset]:
    """The model and dataset of the run ``python utils/main.py --model MODEL --dataset DATASET --NAME VALUE ...``
    would train, ready for :func:`train`; ``args`` maps flag names (without dashes) to values. As on the command
    line, ``num_threads``, when given, sets torch's thread count for the whole process (``torch.set_num_threads``)."""
    parser = _parser()
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.dest not in NOT_ARGUMENTS}
    run_args = parse_args(_argv(model, dataset, args, flags), parser)
    net, (data,) = main.load([run_args])
    return net, data


def train(model: ContinualModel, dataset: ContinualDataset) -> dict[str, Any]:
    """Train a :func:`load_runner` pair; returns the results document, written where the command line writes it
    (unless ``disable_log``). A run whose loss turned non-finite returns its partial document, with ``stopped``."""
    (document,) = main.train(model, [dataset])
    return document


def get_avail_args(model: str | None = None, dataset: str | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """The arguments :func:`load_runner` takes, from the command line's parser, as mammoth's ``get_avail_args``:
    ``(required, optional)``, each ``{name: {"description": help}}``, the optional ones with their ``"default"``.
    Given a model or dataset, the options of the others are left out and its own show its default; a norm's options
    depend on ``nl``, so their default is ``None`` and their description names each norm's."""
    given = {kind: name for kind, name in (("model", model), ("dataset", dataset)) if name is not None}
    for kind, name in given.items():
        (MODELS if kind == "model" else DATASETS).get(name)  # an unknown name: the UserError listing the choices
    chosen = set(given.items())
    owned = merged_options()
    required: dict[str, dict] = {}
    optional: dict[str, dict] = {}
    for action in build_parser()._actions:
        if action.dest in NOT_ARGUMENTS or action.dest in given:
            continue
        owners = {tuple(owner.split(" ", 1)) for owner, _ in owned.get(action.option_strings[0], [])}
        if owners and not owners & chosen and {kind for kind, _ in owners} <= set(given):
            continue  # an option of another model (dataset) than the one given
        default = component_default(owned[action.option_strings[0]], chosen) if owners & chosen else action.default
        if action.required:
            required[action.dest] = {"description": help_of(action)}
        else:
            optional[action.dest] = {"default": default, "description": help_of(action)}
    return required, optional
