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
import shlex
from collections.abc import Iterator, Sequence

from utils.buffer import BUFFER_MODES, ring_size_problem
from utils.core.errors import UserError
from utils.core.options import BINARY_FLAG, Check, Option, at_least, binary, merge, positive

FORWARD_MODES = ("separate", "joint")
MEMBER_FLAG = "--member"
MEMBER_FREE = ("seed", "lr", "run_name", "wandb_name", "wandb_group")
"""What a stacked run's members may differ in besides their norm's and model's own options."""
DTYPES = ("float32", "float64")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (``None``, ``False``, ``""``), whose help text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _binary(parser: argparse._ActionsContainer, name: str, help_text: str) -> None:
    parser.add_argument(name, default=0, help=help_text, **BINARY_FLAG)


def component_options() -> Iterator[tuple[str, str, Option]]:
    """``(kind, name, option)`` for every flag a registered norm, model or dataset declares in its own file."""
    from datasets import DATASETS
    from models import MODELS
    from models.utils.norms import NORMS

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
    p = argparse.ArgumentParser(
        prog="python utils/main.py",
        description="Run one continual-learning experiment (mammoth-compatible flags).",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--dataset", required=True, help="benchmark: seq-fmnist, seq-cifar10, seq-cifar100, seq-miniimg")
    g.add_argument("--model", required=True, help="method, e.g. sgd, joint, er, der, derpp, er_ace")
    g.add_argument("--backbone", default=None, help="network (default: the dataset's, resnet18)")
    g.add_argument("--nf", type=int, default=64, help="ResNet-18 base width: 64 = full, 20 = reduced ResNet-18")
    g.add_argument("--nl", default="BN", help="normalization layer swapped in for every BatchNorm, e.g. BN")
    _binary(g, "--no_affine", "normalization layers without learnable scale and shift")
    g.add_argument(
        "--forward_mode",
        choices=FORWARD_MODES,
        default=None,
        help="stream and replay batches as separate forward passes or one joint pass "
        "(default: the reference's choice: joint for AdaB2N, else the model's own)",
    )
    g.add_argument("--seed", type=int, default=None, help="seeds Python, NumPy, torch and the class order")
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="precision of the network, its initialisation and its inputs; float64 to check that two code paths "
        "agree (slow)",
    )
    _binary(g, "--no_task_shuffle", "keep the natural class order for every seed")
    _binary(g, "--validation", "hold out 10%% of each task's training data and test on it")
    g.add_argument("--samples_per_class", type=int, default=None, help="use only the first N training images per class")
    g.add_argument("--run_name", default=None, help="name of the results file (default: derived from the arguments)")
    g.add_argument(
        MEMBER_FLAG,
        action="append",
        metavar="FLAGS",
        help="train this run as a member of a stack: the shared flags plus these, e.g. --member '--seed 1 --kappa 0.4'"
        f" (repeat; members may differ only in {', '.join('--' + k for k in MEMBER_FREE)} and their norm's and "
        "model's options)",
    )

    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=None, help="learning rate (required unless --load_best_args)")
    o.add_argument("--optim_wd", type=float, default=0.0, help="weight decay")
    o.add_argument("--optim_mom", type=float, default=0.0, help="SGD momentum")
    _binary(o, "--optim_nesterov", "Nesterov momentum")
    o.add_argument("--n_epochs", type=int, default=None, help="epochs per task (default: the dataset's)")
    o.add_argument("--batch_size", type=int, default=None, help="stream batch size (default: the dataset's)")
    o.add_argument("--minibatch_size", type=int, default=None, help="replay batch size (default: --batch_size)")
    o.add_argument("--bs", type=int, default=None, help="sets --batch_size and --minibatch_size (online: 10)")
    o.add_argument("--epochs", type=int, default=None, help="sets --n_epochs (online: 1)")
    _binary(o, "--load_best_args", "use the reference hyper-parameters for this dataset, model and buffer size")

    r = p.add_argument_group("replay")
    r.add_argument("--buffer_size", type=int, default=None, help="replay memory size (required by replay models)")
    r.add_argument("--buffer_mode", default="reservoir", help=f"buffer policy: {', '.join(BUFFER_MODES)}")

    n = p.add_argument_group("normalization layers")
    _binary(n, "--diagnose_norm", "after each task, measure the running statistics' recency bias")

    m = p.add_argument_group("management")
    m.add_argument("--data_path", default="data", help="folder with the datasets' files (downloads go here)")
    m.add_argument("--results_path", default="results", help="folder of the results JSON files")
    m.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    m.add_argument("--num_threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    m.add_argument("--eval_batch_size", type=int, default=256, help="batch size of evaluation")
    m.add_argument(
        "--checkpoint_every", type=int, default=0, help="also checkpoint every N training steps (0: only after tasks)"
    )
    _binary(m, "--resume", "continue the run named --run_name from its last checkpoint")
    _binary(m, "--debug_mode", "train only a few batches per task")
    _binary(m, "--non_verbose", "no progress bars")
    _binary(m, "--disable_log", "write no results file")
    _binary(m, "--ignore_other_metrics", "skip the evaluations that forward transfer needs")

    s = p.add_argument_group("speed (off by default: each changes the arithmetic or costs compile time)")
    _binary(s, "--amp", "bf16 autocast for forward passes (CUDA; CPUs with bf16); norm statistics stay float32")
    _binary(s, "--channels_last", "channels-last memory format for the network and its inputs")
    _binary(s, "--compile", "torch.compile the network (the first steps of each new shape compile)")
    s.add_argument(
        "--compile_mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile's mode with --compile 1 (reduce-overhead replays the compiled network as CUDA graphs)",
    )

    w = p.add_argument_group("wandb")
    _binary(w, "--nowand", "disable wandb")
    w.add_argument("--wandb_project", default="normcl", help="wandb project")
    w.add_argument("--wandb_entity", default=None, help="wandb entity (user or team)")
    w.add_argument("--wandb_name", default=None, help="wandb run name (default: --run_name)")
    w.add_argument("--wandb_group", default=None, help="wandb group (run.py: model + buffer + method)")
    _add_component_options(p)
    return p


def _check(flag: str, value: object, check: Check) -> None:
    """The command-line side of a check: ``--kappa must lie in [0, 1], got 2``."""
    problem = None if value is None else check(value)
    if problem is not None:
        raise UserError(f"{flag} {problem}, got {value}")


def _fill_component_options(args: argparse.Namespace) -> None:
    """Unset component flags: the run's component's default if it declares the flag, else the inactive value."""
    chosen = {("norm", args.nl), ("model", args.model), ("dataset", args.dataset)}
    for flag, owners in merge((f"{kind} {name}", o) for kind, name, o in component_options()).items():
        dest = owners[0][1].dest
        if getattr(args, dest) is None:
            mine = [o for owner, o in owners if tuple(owner.split(" ", 1)) in chosen]
            setattr(args, dest, mine[0].default if mine else owners[0][1].value_when_inactive)
        for _, option in owners:
            if option.check is not None:
                _check(flag, getattr(args, dest), option.check)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line; raises ``UserError`` on bad values."""
    from datasets import get_dataset_class
    from models import MODELS
    from models.utils.norms import NORMS
    from utils.best_args import best_args_for

    args = build_parser().parse_args(argv)
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
    if args.resume and not args.run_name:
        raise UserError("--resume needs the --run_name of the run to continue")
    if args.resume and args.disable_log:
        raise UserError("--resume needs checkpoints, which --disable_log turns off; drop --disable_log")
    _check("--samples_per_class", args.samples_per_class, positive)
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


def member_free(args: argparse.Namespace) -> set[str]:
    """The arguments that stacked members of a run like ``args`` may differ in: ``MEMBER_FREE``, the model's own
    options, and the norm's options that its layer's stacking takes per member (``Stacking.per_member``)."""
    from models import MODELS
    from models.utils.norms import NORMS

    norm = NORMS.get(args.nl)
    own = [*(o for o in norm.options if norm.per_member(o)), *MODELS.get(args.model).OPTIONS]
    return {*MEMBER_FREE, *(o.dest for o in own)}


def stacking_problem(args: argparse.Namespace) -> str | None:
    """Why runs like ``args`` cannot be stacked at all (their norm or model declares no stacking), or ``None``."""
    from models import MODELS
    from models.utils.norms import NORMS

    norm = NORMS.get(args.nl)
    if norm.stacking is None:
        layer = "its builder returns no layer class" if norm.layer is None else f"{norm.layer.__name__} is not"
        return (
            f"norm '{args.nl}' cannot be stacked: {layer} declared @stackable (models/utils/layer_stacking.py); "
            f"run its runs alone (without {MEMBER_FLAG} or run.py --stack)"
        )
    if not MODELS.get(args.model).STACKS:
        return (
            f"model '{args.model}' does not declare STACKS = True (README, Extending the framework); run its runs "
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
