"""The command line of ``utils/main.py``, with mammoth's flag names: the framework's flags, each declared with what
it is besides its value (its :class:`~normcl.utils.core.options.Roles` and its value's check), and the parser that
adds the components' own (``utils/component_options.py``). Binary flags accept both ``--flag`` and ``--flag 1``.

Resolving a run's values is ``utils/args.py``'s; the rules of stacked runs (``--member``) are
``utils/member_args.py``'s.
"""

from __future__ import annotations

import argparse
import functools

from normcl.utils.buffer_modes import BUFFER_MODES
from normcl.utils.component_options import add_component_options
from normcl.utils.core.commands import WANDB_PROJECT, CommandParser
from normcl.utils.core.options import (
    BINARY_FLAG,
    NO_ROLES,
    PROTOCOL,
    RESUME_FREE,
    Roles,
    at_least,
    declare,
    one_of,
    positive,
)

FORWARD_MODES = ("separate", "joint")
MEMBER_FLAG = "--member"
DTYPES = ("float32", "float64")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (``None``, ``False``, ``""``), whose help text says what happens instead."""

    def _format_action(self, action: argparse.Action) -> str:
        action.help = help_of(action)  # a help text of what is registered: read when --help is asked for
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def help_of(action: argparse.Action) -> str | None:
    """A flag's help text; a callable one (``--nl``'s lists the registered norms, which load torch) is called."""
    return action.help() if callable(action.help) else action.help


def _norm_names() -> str:
    """``--nl``'s help: the registered norms (their modules, and torch, load only when ``--help`` is read)."""
    from normcl.models.utils import NORMS

    return f"normalization layer swapped in for every BatchNorm: {', '.join(NORMS.names())}"


def _forward_mode_help() -> str:
    """``--forward_mode``'s help: which norms' layers and which models ask for a joint pass, read from the registries
    (their modules load only when ``--help`` is read)."""
    from normcl.models import MODELS
    from normcl.models.utils import NORMS

    norms = [n for n in NORMS.names() if getattr(NORMS.get(n).layer, "prefers_joint_forward", False)]
    models = [n for n in MODELS.names() if MODELS.get(n).REFERENCE_FORWARD == "joint"]
    return (
        "stream and replay batches as separate forward passes or one joint pass (default: the reference's choice: "
        f"joint for the norms whose layers ask for it, {', '.join(norms)}, else the model's own, joint for "
        f"{', '.join(models)}, separate for the others)"
    )


def _binary(group: argparse._ActionsContainer, flag: str, help: str, roles: Roles = NO_ROLES) -> None:
    declare(group, flag, roles, default=0, help=help, **BINARY_FLAG)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        "normcl-run",
        description="Run one continual-learning experiment (mammoth-compatible flags).",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("experiment")
    declare(
        g,
        "--dataset",
        Roles(launcher="--datasets"),
        required=True,
        help="benchmark: seq-fmnist, seq-cifar10, seq-cifar100, seq-miniimg",
    )
    declare(
        g, "--model", Roles(launcher="--models"), required=True, help="method, e.g. sgd, joint, er, der, derpp, er_ace"
    )
    declare(g, "--backbone", PROTOCOL, default=None, help="network (default: the dataset's, resnet18)")
    declare(
        g,
        "--nf",
        Roles(protocol=True, stated=(3, "--nf")),
        positive,
        type=int,
        default=64,
        help="ResNet-18 base width: 64 = full, 20 = reduced ResNet-18",
    )
    declare(
        g,
        "--nl",
        Roles(launcher="--methods"),
        default="BN",
        help=_norm_names,
    )
    _binary(g, "--no_affine", "normalization layers without learnable scale and shift")
    declare(
        g,
        "--forward_mode",
        choices=FORWARD_MODES,
        default=None,
        help=_forward_mode_help,
    )
    declare(
        g,
        "--seed",
        Roles(member_free=True, launcher="--num_seeds"),
        type=int,
        default=None,
        help="seeds Python, NumPy, torch and the class order",
    )
    declare(
        g,
        "--dtype",
        PROTOCOL,
        choices=DTYPES,
        default="float32",
        help="precision of the network, its initialisation and its inputs; "
        "float64 to check that two code paths agree (slow)",
    )
    _binary(g, "--no_task_shuffle", "keep the natural class order for every seed", PROTOCOL)
    _binary(g, "--validation", "hold out 10%% of each task's training data and test on it")
    declare(
        g,
        "--samples_per_class",
        Roles(protocol=True, stated=(4, "--samples_per_class")),
        positive,
        type=int,
        default=None,
        help="use only the first N training images per class",
    )
    declare(
        g,
        "--test_samples_per_class",
        Roles(protocol=True, stated=(5, "--test_samples_per_class")),
        positive,
        type=int,
        default=None,
        help="test on only the first N test images per class (quick runs; default: all)",
    )
    declare(
        g,
        "--run_name",
        Roles(member_free=True, launcher="the grid's run names"),
        default=None,
        help="name of the results file (default: derived from the arguments)",
    )
    declare(
        g,
        MEMBER_FLAG,
        Roles(launcher="--stack K (the launcher stacks compatible runs itself)"),
        action="append",
        metavar="FLAGS",
        help="train this run as a member of a stack: the shared flags plus these, e.g. --member '--seed 1 --kappa 0.4'"
        " (repeat; what members may differ in: docs/stacking.md; a wrong difference is refused by name)",
    )

    o = p.add_argument_group("optimisation")
    declare(
        o,
        "--lr",
        Roles(member_free=True, protocol=True),
        positive,
        type=float,
        default=None,
        help="learning rate (required unless --load_best_args)",
    )
    declare(o, "--optim_wd", PROTOCOL, at_least(0), type=float, default=0.0, help="weight decay")
    declare(o, "--optim_mom", PROTOCOL, at_least(0), type=float, default=0.0, help="SGD momentum")
    _binary(o, "--optim_nesterov", "Nesterov momentum", PROTOCOL)
    declare(
        o,
        "--n_epochs",
        Roles(protocol=True, stated=(1, "--epochs")),
        positive,
        type=int,
        default=None,
        help="epochs per task (default: the dataset's)",
    )
    declare(
        o,
        "--batch_size",
        Roles(protocol=True, stated=(0, "--bs")),
        positive,
        type=int,
        default=None,
        help="stream batch size (default: the dataset's)",
    )
    declare(
        o,
        "--minibatch_size",
        PROTOCOL,
        positive,
        type=int,
        default=None,
        help="replay batch size (default: --batch_size)",
    )
    declare(
        o,
        "--bs",
        Roles(launcher="--bs"),
        positive,
        type=int,
        default=None,
        help="sets --batch_size and --minibatch_size (online: 10)",
    )
    declare(
        o, "--epochs", Roles(launcher="--epochs"), positive, type=int, default=None, help="sets --n_epochs (online: 1)"
    )
    _binary(
        o,
        "--load_best_args",
        "use the reference hyper-parameters for this dataset, model and buffer size",
        Roles(launcher="nothing: every run loads the best args, unless --no_best_args"),
    )

    r = p.add_argument_group("replay")
    declare(
        r,
        "--buffer_size",
        Roles(launcher="--buffer_sizes"),
        positive,
        type=int,
        default=None,
        help="replay memory size (required by replay models)",
    )
    declare(
        r,
        "--buffer_mode",
        Roles(protocol=True, launcher="--buffer_mode", stated=(2, "--buffer_mode")),
        one_of(*BUFFER_MODES),
        default="reservoir",
        help=f"buffer policy: {', '.join(BUFFER_MODES)}",
    )

    n = p.add_argument_group("normalization layers")
    _binary(n, "--diagnose_norm", "after each task, measure the running statistics' recency bias")

    m = p.add_argument_group("management")
    declare(
        m,
        "--data_path",
        RESUME_FREE,
        default=None,
        help="folder with the datasets' files, downloads go here (default: data, then the dataset's system folders)",
    )
    declare(
        m,
        "--results_path",
        Roles(resume_free=True, launcher="--results_path"),
        default="results",
        help="folder of the results JSON files",
    )
    declare(m, "--device", RESUME_FREE, default=None, help="torch device (default: cuda if available, else cpu)")
    declare(
        m,
        "--num_threads",
        RESUME_FREE,
        positive,
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice)",
    )
    declare(m, "--eval_batch_size", RESUME_FREE, positive, type=int, default=256, help="batch size of evaluation")
    declare(
        m,
        "--checkpoint_every",
        RESUME_FREE,
        at_least(0),
        type=int,
        default=0,
        help="also checkpoint every N training steps (0: only after tasks)",
    )
    _binary(
        m,
        "--resume",
        "continue the run named --run_name from its last checkpoint",
        Roles(resume_free=True, launcher="nothing: runs with a checkpoint are resumed from it"),
    )
    _binary(m, "--debug_mode", "train only a few batches per task")
    _binary(m, "--non_verbose", "no progress bars", RESUME_FREE)
    _binary(
        m,
        "--disable_log",
        "write no results file",
        Roles(resume_free=True, launcher="nothing: resume needs each run's results file"),
    )
    _binary(m, "--ignore_other_metrics", "skip the evaluations that forward transfer needs")

    e = p.add_argument_group("evaluation along the stream (the anytime curve: AAA, min-ACC, WC-ACC)")
    declare(
        e,
        "--eval_every",
        PROTOCOL,
        at_least(0),
        type=int,
        default=0,
        help="also evaluate every N training steps, and at each task end, "
        "on --eval_subset test images of every task seen so far (0: off)",
    )
    declare(
        e,
        "--eval_subset",
        PROTOCOL,
        positive,
        type=int,
        default=500,
        help="test images per task that --eval_every scores: drawn once from the seed, the same for every method",
    )

    s = p.add_argument_group("speed (off by default: each changes the arithmetic or costs compile time)")
    _binary(
        s, "--amp", "bf16 autocast for forward passes (CUDA; CPUs with bf16); norm statistics stay float32", PROTOCOL
    )
    _binary(s, "--channels_last", "channels-last memory format for the network and its inputs", RESUME_FREE)
    _binary(s, "--compile", "torch.compile the network (the first steps of each new shape compile)", RESUME_FREE)
    declare(
        s,
        "--compile_mode",
        RESUME_FREE,
        default="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile's mode with --compile 1 (reduce-overhead replays the compiled network as CUDA graphs)",
    )

    w = p.add_argument_group("wandb")
    _binary(w, "--nowand", "disable wandb", Roles(resume_free=True, launcher="--nowand"))
    declare(
        w,
        "--wandb_project",
        Roles(resume_free=True, launcher="--wandb_project"),
        default=WANDB_PROJECT,
        help="wandb project",
    )
    declare(w, "--wandb_entity", RESUME_FREE, default=None, help="wandb entity (user or team)")
    declare(
        w,
        "--wandb_name",
        Roles(resume_free=True, member_free=True, launcher="the grid's run names"),
        default=None,
        help="wandb run name (default: --run_name)",
    )
    declare(
        w,
        "--wandb_group",
        Roles(resume_free=True, member_free=True, launcher="the grid's groups"),
        default=None,
        help="wandb group (run.py: dataset, model, buffer, method)",
    )
    add_component_options(p)
    return p


@functools.cache
def flag_roles() -> dict[str, Roles]:
    """Every flag's :class:`Roles` by its destination, as declared with it (a component's option: part of a report
    cell's identity, and set by ``run.py`` where it names a launcher flag)."""
    return {a.dest: a.roles for a in build_parser()._actions if a.dest != "help"}
