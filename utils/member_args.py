"""The rules of stacked runs on the command line (``--member``): each member's arguments, what members may differ in,
and which runs cannot hold several members in one network.

``utils/main.py FLAGS --member "OWN" --member "OWN" ...``: each member parses as the run of the shared flags plus its
own (``utils/args.py``). Without ``--member`` the shared flags are one run, a stack of one, as they are with one
``--member``; what a stack asks more of its runs (a norm and a model that stack, a seed and a name each) is asked of
several members only.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from normcl.models import MODELS
from normcl.models.utils import NORMS
from normcl.utils.args import parse_args
from normcl.utils.core.errors import UserError
from normcl.utils.core.run_files import default_name_stem
from normcl.utils.parser import MEMBER_FLAG, flag_roles


def split_members(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The shared flags and each ``--member``'s own flags."""
    shared, members, tokens = [], [], iter(argv)
    for token in tokens:
        if token == MEMBER_FLAG:
            members.append(next(tokens, None))
            if members[-1] is None:
                raise UserError(f"{MEMBER_FLAG} needs the member's flags, e.g. {MEMBER_FLAG} '--seed 1 --kappa 0.4'")
        elif token.startswith(MEMBER_FLAG + "="):
            members.append(token.split("=", 1)[1])
        else:
            shared.append(token)
    return shared, members


def member_free(args: argparse.Namespace) -> set[str]:
    """The arguments that stacked members of a run like ``args`` may differ in: the flags declared member-free, the
    run's model's own options, and the norm's options that its layer's stacking takes per member
    (``Stacking.per_member``)."""
    norm = NORMS.get(args.nl)
    free = {dest for dest, roles in flag_roles().items() if roles.member_free}
    return (
        free | {o.dest for o in MODELS.get(args.model).OPTIONS} | {o.dest for o in norm.options if norm.per_member(o)}
    )


def stacking_problem(args: argparse.Namespace) -> str | None:
    """Why several runs like ``args`` cannot be stacked (their norm or model declares no stacking), or ``None``."""
    norm = NORMS.get(args.nl)
    if norm.stacking is None:
        layer = "its builder returns no layer class" if norm.layer is None else f"{norm.layer.__name__} is not"
        return (
            f"norm '{args.nl}' cannot be stacked: {layer} declared @stackable (models/utils/layer_stacking.py); "
            f"run its runs alone (without {MEMBER_FLAG} or run.py --stack)"
        )
    if not MODELS.get(args.model).STACKS:
        return (
            f"model '{args.model}' does not declare STACKS = True (docs/extending.md); run its runs "
            f"alone (without {MEMBER_FLAG} or run.py --stack)"
        )
    return None


def parse_members(shared: Sequence[str], members: Sequence[str]) -> list[argparse.Namespace]:
    """Each member's arguments (the shared flags, then its own), validated as a run alone, then as a stack (no
    member: the run of the shared flags)."""
    try:
        runs = [parse_args([*shared, *shlex.split(member)]) for member in members or [""]]
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{MEMBER_FLAG} flags cannot be split ({e}); quote each member's flags once") from None
    first, several = runs[0], len(runs) > 1
    problem = stacking_problem(first) if several else None
    if problem is not None:
        raise UserError(problem)
    free = member_free(first)
    for run in runs[1:]:
        for key, value in vars(run).items():
            if key not in free and value != getattr(first, key):
                allowed = ", ".join(f"--{k}" for k in sorted(free))
                raise UserError(
                    f"stacked members differ in --{key} ({getattr(first, key)!r} and {value!r}); members may differ "
                    f"only in {allowed}: run the others in another stack"
                )
    if several and any(run.seed is None for run in runs):
        raise UserError(
            f"every stacked member needs a --seed (its generator starts from it): add it to each {MEMBER_FLAG}"
        )
    names = [run.run_name or f"{default_name_stem(run)} (the default)" for run in runs]
    if len(set(names)) < len(names):
        raise UserError(f"stacked members share a --run_name ({sorted(names)}); give each member its own")
    return runs
