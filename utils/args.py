"""Command-line interface of ``utils/main.py``, with mammoth's flag names.

Values are resolved in this order: explicit flags, then ``--load_best_args``
(the reference hyper-parameters), then the dataset's defaults; ``--bs`` and
``--epochs`` override everything (the paper's online setting is
``--bs 10 --epochs 1``). Binary flags accept both ``--flag`` and ``--flag 1``.

The flags of the framework are declared here; a norm's, model's or dataset's own flags are declared in its own file
(``Option``, ``utils/core/options.py``) and assembled from the registries, one argument group per kind. A flag that the
run's component does not declare records its inactive value. Every value is validated here, once, in the flag's
wording; library code raises ``ValueError`` in its own terms.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from collections.abc import Iterator, Sequence
from typing import Any

from normcl.utils.buffer import BUFFER_MODES, ring_size_problem
from normcl.utils.core.commands import WANDB_PROJECT, CommandParser
from normcl.utils.core.errors import UserError
from normcl.utils.core.options import (
    BINARY_FLAG,
    PROTOCOL,
    RESUME_FREE,
    Check,
    Option,
    Roles,
    at_least,
    binary,
    merge,
    positive,
)

FORWARD_MODES = ("separate", "joint")
MEMBER_FLAG = "--member"
DTYPES = ("float32", "float64")
NO_ROLES = Roles()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (``None``, ``False``, ``""``), whose help text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _flag(group: argparse._ActionsContainer, name: str, roles: Roles = NO_ROLES, **kwargs: Any) -> None:
    """``add_argument`` with the flag's :class:`Roles` attached to it (read back by :func:`flag_roles`)."""
    group.add_argument(name, **kwargs).roles = roles  # type: ignore[attr-defined]


def _binary(group: argparse._ActionsContainer, name: str, help_text: str, roles: Roles = NO_ROLES) -> None:
    _flag(group, name, roles, default=0, help=help_text, **BINARY_FLAG)


def component_options() -> Iterator[tuple[str, str, Option]]:
    """``(kind, name, option)`` for every flag a registered norm, model or dataset declares in its own file."""
    from normcl.datasets import DATASETS
    from normcl.models import MODELS
    from normcl.models.utils.norms import NORMS

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


def _add_component_options(parser: argparse.ArgumentParser) -> None:
    titles = {"norm": "options of the normalization layers (--nl)", "model": "options of the models (--model)"}
    titles["dataset"] = "options of the datasets (--dataset)"
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, owners in merge((f"{kind} {name}", o) for kind, name, o in component_options()).items():
        kind, _ = owners[0][0].split(" ", 1)
        group = groups.get(kind) or groups.setdefault(kind, parser.add_argument_group(titles[kind]))
        defaults = "; ".join(f"{owner.split(' ', 1)[1]}: {o.default}" for owner, o in owners)
        names = ", ".join(owner.split(" ", 1)[1] for owner, _ in owners)
        option = owners[0][1]
        kwargs = BINARY_FLAG if option.type is binary else {"type": option.type}
        group.add_argument(flag, default=None, help=f"{names}: {option.help} (default {defaults})", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from normcl.models.utils.norms import NORMS

    p = CommandParser(
        "normcl-run",
        description="Run one continual-learning experiment (mammoth-compatible flags).",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("experiment")
    help_text = "benchmark: seq-fmnist, seq-cifar10, seq-cifar100, seq-miniimg"
    _flag(g, "--dataset", Roles(launcher="--datasets"), required=True, help=help_text)
    help_text = "method, e.g. sgd, joint, er, der, derpp, er_ace"
    _flag(g, "--model", Roles(launcher="--models"), required=True, help=help_text)
    _flag(g, "--backbone", PROTOCOL, default=None, help="network (default: the dataset's, resnet18)")
    _flag(g, "--nf", PROTOCOL, type=int, default=64, help="ResNet-18 base width: 64 = full, 20 = reduced ResNet-18")
    help_text = f"normalization layer swapped in for every BatchNorm: {', '.join(NORMS.names())}"
    _flag(g, "--nl", Roles(launcher="--methods"), default="BN", help=help_text)
    _binary(g, "--no_affine", "normalization layers without learnable scale and shift")
    _flag(
        g,
        "--forward_mode",
        choices=FORWARD_MODES,
        default=None,
        help="stream and replay batches as separate forward passes or one joint pass "
        "(default: the reference's choice: joint for AdaB2N, else the model's own)",
    )
    help_text = "seeds Python, NumPy, torch and the class order"
    _flag(g, "--seed", Roles(member_free=True, launcher="--num_seeds"), type=int, default=None, help=help_text)
    help_text = "precision of the network, its initialisation and its inputs; float64 to check that two code paths "
    _flag(g, "--dtype", PROTOCOL, choices=DTYPES, default="float32", help=help_text + "agree (slow)")
    _binary(g, "--no_task_shuffle", "keep the natural class order for every seed", PROTOCOL)
    _binary(g, "--validation", "hold out 10%% of each task's training data and test on it")
    help_text = "use only the first N training images per class"
    _flag(g, "--samples_per_class", PROTOCOL, type=int, default=None, help=help_text)
    help_text = "test on only the first N test images per class (quick runs; default: all)"
    _flag(g, "--test_samples_per_class", PROTOCOL, type=int, default=None, help=help_text)
    roles = Roles(member_free=True, launcher="the grid's run names")
    _flag(g, "--run_name", roles, default=None, help="name of the results file (default: derived from the arguments)")
    _flag(
        g,
        MEMBER_FLAG,
        Roles(launcher="--stack K (the launcher stacks compatible runs itself)"),
        action="append",
        metavar="FLAGS",
        help="train this run as a member of a stack: the shared flags plus these, e.g. --member '--seed 1 --kappa 0.4'"
        " (repeat; what members may differ in: docs/stacking.md; a wrong difference is refused by name)",
    )

    o = p.add_argument_group("optimisation")
    help_text = "learning rate (required unless --load_best_args)"
    _flag(o, "--lr", Roles(member_free=True, protocol=True), type=float, default=None, help=help_text)
    _flag(o, "--optim_wd", PROTOCOL, type=float, default=0.0, help="weight decay")
    _flag(o, "--optim_mom", PROTOCOL, type=float, default=0.0, help="SGD momentum")
    _binary(o, "--optim_nesterov", "Nesterov momentum", PROTOCOL)
    _flag(o, "--n_epochs", PROTOCOL, type=int, default=None, help="epochs per task (default: the dataset's)")
    _flag(o, "--batch_size", PROTOCOL, type=int, default=None, help="stream batch size (default: the dataset's)")
    _flag(o, "--minibatch_size", PROTOCOL, type=int, default=None, help="replay batch size (default: --batch_size)")
    help_text = "sets --batch_size and --minibatch_size (online: 10)"
    _flag(o, "--bs", Roles(launcher="--bs"), type=int, default=None, help=help_text)
    _flag(o, "--epochs", Roles(launcher="--epochs"), type=int, default=None, help="sets --n_epochs (online: 1)")
    help_text = "use the reference hyper-parameters for this dataset, model and buffer size"
    _binary(
        o,
        "--load_best_args",
        help_text,
        Roles(launcher="nothing: every run loads the best args, unless --no_best_args"),
    )

    r = p.add_argument_group("replay")
    help_text = "replay memory size (required by replay models)"
    _flag(r, "--buffer_size", Roles(launcher="--buffer_sizes"), type=int, default=None, help=help_text)
    help_text = f"buffer policy: {', '.join(BUFFER_MODES)}"
    _flag(r, "--buffer_mode", Roles(protocol=True, launcher="--buffer_mode"), default="reservoir", help=help_text)

    n = p.add_argument_group("normalization layers")
    _binary(n, "--diagnose_norm", "after each task, measure the running statistics' recency bias")

    m = p.add_argument_group("management")
    help_text = "folder with the datasets' files, downloads go here (default: data, then the dataset's system folders)"
    _flag(m, "--data_path", RESUME_FREE, default=None, help=help_text)
    roles = Roles(resume_free=True, launcher="--results_path")
    _flag(m, "--results_path", roles, default="results", help="folder of the results JSON files")
    help_text = "torch device (default: cuda if available, else cpu)"
    _flag(m, "--device", RESUME_FREE, default=None, help=help_text)
    help_text = "CPU threads for torch (default: torch's choice)"
    _flag(m, "--num_threads", RESUME_FREE, type=int, default=None, help=help_text)
    _flag(m, "--eval_batch_size", RESUME_FREE, type=int, default=256, help="batch size of evaluation")
    help_text = "also checkpoint every N training steps (0: only after tasks)"
    _flag(m, "--checkpoint_every", RESUME_FREE, type=int, default=0, help=help_text)
    roles = Roles(resume_free=True, launcher="nothing: runs with a checkpoint are resumed from it")
    _binary(m, "--resume", "continue the run named --run_name from its last checkpoint", roles)
    _binary(m, "--debug_mode", "train only a few batches per task")
    _binary(m, "--non_verbose", "no progress bars", RESUME_FREE)
    roles = Roles(resume_free=True, launcher="nothing: resume needs each run's results file")
    _binary(m, "--disable_log", "write no results file", roles)
    _binary(m, "--ignore_other_metrics", "skip the evaluations that forward transfer needs")

    e = p.add_argument_group("evaluation along the stream (the anytime curve: AAA, min-ACC, WC-ACC)")
    help_text = "also evaluate every N training steps, and at each task end, on --eval_subset test images of every "
    _flag(e, "--eval_every", PROTOCOL, type=int, default=0, help=help_text + "task seen so far (0: off)")
    help_text = "test images per task that --eval_every scores: drawn once from the seed, the same for every method"
    _flag(e, "--eval_subset", PROTOCOL, type=int, default=500, help=help_text)

    s = p.add_argument_group("speed (off by default: each changes the arithmetic or costs compile time)")
    help_text = "bf16 autocast for forward passes (CUDA; CPUs with bf16); norm statistics stay float32"
    _binary(s, "--amp", help_text, PROTOCOL)
    _binary(s, "--channels_last", "channels-last memory format for the network and its inputs", RESUME_FREE)
    _binary(s, "--compile", "torch.compile the network (the first steps of each new shape compile)", RESUME_FREE)
    _flag(
        s,
        "--compile_mode",
        RESUME_FREE,
        default="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile's mode with --compile 1 (reduce-overhead replays the compiled network as CUDA graphs)",
    )

    w = p.add_argument_group("wandb")
    _binary(w, "--nowand", "disable wandb", Roles(resume_free=True, launcher="--nowand"))
    roles = Roles(resume_free=True, launcher="--wandb_project")
    _flag(w, "--wandb_project", roles, default=WANDB_PROJECT, help="wandb project")
    _flag(w, "--wandb_entity", RESUME_FREE, default=None, help="wandb entity (user or team)")
    roles = Roles(resume_free=True, member_free=True, launcher="the grid's run names")
    _flag(w, "--wandb_name", roles, default=None, help="wandb run name (default: --run_name)")
    roles = Roles(resume_free=True, member_free=True, launcher="the grid's groups")
    _flag(w, "--wandb_group", roles, default=None, help="wandb group (run.py: dataset, model, buffer, method)")
    _add_component_options(p)
    return p


def _check(flag: str, value: object, check: Check) -> None:
    """The command-line side of a check: ``--kappa must lie in [0, 1], got 2``."""
    problem = None if value is None else check(value)
    if problem is not None:
        raise UserError(f"{flag} {problem}, got {value}")


def component_default(owners: list[tuple[str, Option]], chosen: set[tuple[str, str]]) -> Any:
    """An unset component flag's value: the default of the chosen component (``(kind, name)``) that declares it, else
    the inactive value; ``owners``: the flag's entry of :func:`merge`."""
    mine = [o for owner, o in owners if tuple(owner.split(" ", 1)) in chosen]
    return mine[0].default if mine else owners[0][1].value_when_inactive


def _fill_component_options(args: argparse.Namespace) -> None:
    """Unset component flags: the run's component's default if it declares the flag, else the inactive value."""
    chosen = {("norm", args.nl), ("model", args.model), ("dataset", args.dataset)}
    for flag, owners in merge((f"{kind} {name}", o) for kind, name, o in component_options()).items():
        dest = owners[0][1].dest
        if getattr(args, dest) is None:
            setattr(args, dest, component_default(owners, chosen))
        for _, option in owners:
            if option.check is not None:
                _check(flag, getattr(args, dest), option.check)


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse (with :func:`build_parser`'s parser, or ``parser``) and validate the command line; raises ``UserError``."""
    from normcl.datasets import get_dataset_class
    from normcl.models import MODELS
    from normcl.models.utils.norms import NORMS
    from normcl.utils.best_args import best_args_for

    args = (parser or build_parser()).parse_args(argv)
    dataset_cls = get_dataset_class(args.dataset)
    model_cls = MODELS.get(args.model)
    NORMS.get(args.nl)
    if args.buffer_mode not in BUFFER_MODES:
        raise UserError(f"unknown buffer mode '{args.buffer_mode}'; choose one of: {', '.join(BUFFER_MODES)}")
    if model_cls.USES_BUFFER and args.buffer_size is None:
        raise UserError(f"model '{args.model}' replays samples: pass --buffer_size N (e.g. --buffer_size 500)")
    _check("--buffer_size", args.buffer_size, positive)
    n_tasks = dataset_cls.N_TASKS

    if args.load_best_args:
        buffer = args.buffer_size if model_cls.USES_BUFFER else None
        for key, value in best_args_for(args.dataset, args.model, buffer).items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    if args.bs is not None:
        args.batch_size = args.minibatch_size = args.bs
    if args.epochs is not None:
        args.n_epochs = args.epochs
    if args.batch_size is None:
        args.batch_size = dataset_cls.BATCH_SIZE
    if args.minibatch_size is None:
        args.minibatch_size = args.batch_size
    if args.n_epochs is None:
        args.n_epochs = dataset_cls.N_EPOCHS
    if args.lr is None:
        raise UserError("--lr is required: pass --lr 0.03, or --load_best_args for the reference value")
    _fill_component_options(args)
    _check("--lr", args.lr, positive)
    for name in ("optim_wd", "optim_mom"):
        _check(f"--{name}", getattr(args, name), at_least(0))
    for name in ("batch_size", "minibatch_size", "n_epochs", "eval_batch_size", "nf", "num_threads"):
        _check(f"--{name}", getattr(args, name), positive)
    _check("--checkpoint_every", args.checkpoint_every, at_least(0))
    _check("--eval_every", args.eval_every, at_least(0))
    _check("--eval_subset", args.eval_subset, positive)
    if args.resume and not args.run_name:
        raise UserError("--resume needs the --run_name of the run to continue")
    if args.resume and args.disable_log:
        raise UserError("--resume needs checkpoints, which --disable_log turns off; drop --disable_log")
    _check("--samples_per_class", args.samples_per_class, positive)
    _check("--test_samples_per_class", args.test_samples_per_class, positive)
    ring_problem = None
    if args.buffer_size is not None and args.buffer_mode == "ring":
        ring_problem = ring_size_problem(args.buffer_size, n_tasks)
    if ring_problem is not None:
        fix = f"use --buffer_size >= {n_tasks} or --buffer_mode reservoir"
        raise UserError(f"--buffer_size {args.buffer_size} {ring_problem}; {fix}")
    if dataset_cls.SETTING not in model_cls.COMPATIBILITY:
        raise UserError(
            f"model '{args.model}' does not support the {dataset_cls.SETTING} setting of '{args.dataset}'; "
            f"it supports: {', '.join(model_cls.COMPATIBILITY)}"
        )
    if args.backbone is None:
        args.backbone = dataset_cls.BACKBONE
    return args


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


@functools.cache
def flag_roles() -> dict[str, Roles]:
    """Every flag's :class:`Roles` by its destination: the framework's as declared with them in
    :func:`build_parser`; a component's option is part of a report cell's identity and ``run.py`` sets the ones that
    name a launcher flag (whether stacked members may differ in one depends on the run's model and norm:
    :func:`member_free`)."""
    roles = {a.dest: getattr(a, "roles", Roles()) for a in build_parser()._actions if a.dest != "help"}
    for _, _, option in component_options():
        roles[option.dest] = Roles(protocol=True, launcher=option.launcher)
    return roles


def member_free(args: argparse.Namespace) -> set[str]:
    """The arguments that stacked members of a run like ``args`` may differ in: the flags declared member-free, the
    run's model's own options, and the norm's options that its layer's stacking takes per member
    (``Stacking.per_member``)."""
    from normcl.models import MODELS
    from normcl.models.utils.norms import NORMS

    norm = NORMS.get(args.nl)
    free = {dest for dest, roles in flag_roles().items() if roles.member_free}
    return (
        free | {o.dest for o in MODELS.get(args.model).OPTIONS} | {o.dest for o in norm.options if norm.per_member(o)}
    )


def stacking_problem(args: argparse.Namespace) -> str | None:
    """Why runs like ``args`` cannot be stacked at all (their norm or model declares no stacking), or ``None``."""
    from normcl.models import MODELS
    from normcl.models.utils.norms import NORMS

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
    """Each member's arguments (the shared flags, then its own), validated as a run alone, then as a stack."""
    try:
        runs = [parse_args([*shared, *shlex.split(member)]) for member in members]
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{MEMBER_FLAG} flags cannot be split ({e}); quote each member's flags once") from None
    first = runs[0]
    problem = stacking_problem(first)
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
    if any(run.seed is None for run in runs):
        raise UserError(
            f"every stacked member needs a --seed (its generator starts from it): add it to each {MEMBER_FLAG}"
        )
    names = [run.run_name for run in runs if run.run_name is not None]
    if len(set(names)) < len(names):
        raise UserError(f"stacked members share a --run_name ({sorted(names)}); give each member its own")
    return runs
