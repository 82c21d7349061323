"""``run.py --stack K``: the grid's compatible runs packed into stacks of at most K, each stack one process.

``utils/main.py`` trains K runs, one ``--member`` each, as one vectorised network whose members are the runs alone
(docs/stacking.md), as long as they differ only in what ``normcl.utils.member_args.member_free`` allows (the flags
declared member-free, the model's options and those of the norm's options that its stacking takes per member). Runs are
grouped by that rule, read from each run's parsed flags; a stack's command gives each member exactly the flags of its
run alone (the shared ones once), so its results file, run and wandb names and results are the
run's, and ``utils/main.py``'s own ``parse_members`` checks that before the stack is started. The packing happens
when a phase starts, so runs done by then (results, or diverged) are left out, as are runs with a checkpoint of their
own: they resume alone; a stack interrupted earlier is packed again as it was, so that it resumes.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from argparse import Namespace
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO, TypeAlias

from normcl.utils.args import parse_args
from normcl.utils.core.errors import UserError
from normcl.utils.core.run_files import checkpoint_file, job_log_file, stack_checkpoint_file
from normcl.utils.experiments.grid import Run
from normcl.utils.member_args import member_free, parse_members, split_members, stacking_problem
from normcl.utils.parser import MEMBER_FLAG


@dataclass(frozen=True)
class Stack:
    """Runs trained in one process: one job for the scheduler (one log, one attempt count, one GPU slot), which
    holds the lock of each member for as long as it runs."""

    name: str
    members: tuple[Run, ...]
    log: Path

    @property
    def done(self) -> bool:
        return all(run.done for run in self.members)

    @property
    def diverged(self) -> bool:
        return all(run.diverged for run in self.members)

    @property
    def usage_threshold(self) -> float:
        return self.members[0].usage_threshold

    @property
    def workdir(self) -> Path:
        return self.members[0].workdir


Job: TypeAlias = Run | Stack
"""What the scheduler starts as one process: a run alone, or a stack."""


def narrowed(job: Job, runs: Sequence[Run]) -> Job:
    """``job`` with only ``runs`` left (its members still to do): a stack keeps its name and log, so that a retry
    counts as its next attempt."""
    return job if isinstance(job, Run) else replace(job, members=tuple(runs))


def _items(argv: Sequence[str]) -> list[tuple[str, ...]]:
    """The flags of ``argv``, each with the values that follow it."""
    items: list[list[str]] = []
    for token in argv:
        if token.startswith("--") or not items:
            items.append([token])
        else:
            items[-1].append(token)
    return [tuple(item) for item in items]


def stack_flags(runs: Sequence[Run]) -> list[str]:
    """``utils/main.py``'s flags for ``runs`` as one stack: the flags that they all give alike once, in the first
    run's order, then a ``--member`` with each run's others (a run whose flags are all shared, a stack's only one,
    needs none: it is the stack of one). argparse does not care about the order of distinct flags, so each member
    parses exactly its run's flags; runs that repeat a flag (last one wins) keep all theirs."""
    per_run = [_items(run.argv) for run in runs]
    repeats = any(len({i[0].split("=", 1)[0] for i in items}) < len(items) for items in per_run)
    common = set() if repeats else set(per_run[0]).intersection(*per_run[1:])
    shared = [token for item in per_run[0] if item in common for token in item]
    own = [[token for item in items if item not in common for token in item] for items in per_run]
    return shared + [token for flags in own if flags for token in (MEMBER_FLAG, shlex.join(flags))]


def run_arguments(argv: Sequence[str]) -> Namespace | None:
    """``utils/main.py``'s arguments for ``argv``; ``None`` when they do not parse (the run then fails alone)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return parse_args(list(argv))
    except (UserError, SystemExit):
        return None


def _shared_arguments(args: Namespace) -> str:
    """What a stack's members must share: every argument but those ``normcl.utils.member_args.parse_members`` lets
    them differ in (:func:`normcl.utils.member_args.member_free`)."""
    free = member_free(args)
    return repr(sorted((key, value) for key, value in vars(args).items() if key not in free))


def stack_problem(runs: Sequence[Run], alone: dict[str, Namespace]) -> str | None:
    """Why ``runs`` cannot be stacked, or ``None``: ``utils/main.py``'s own parser reads the stack's flags, and each
    member must get exactly the arguments of its run alone (``alone``: run name -> its parsed flags)."""
    shared, members = split_members(stack_flags(runs))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            stacked = parse_members(shared, members)
    except UserError as e:
        return str(e)
    except SystemExit:
        return "utils/main.py rejects the stack's flags"
    for run, args in zip(runs, stacked, strict=True):
        if vars(args) != vars(alone[run.name]):
            return f"{run.name} would get other arguments than alone"
    return None


def even_chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    """``items`` in the fewest runs of consecutive items of at most ``size``, as even as possible: a group's stacks
    then take about as long, instead of a full stack and a small remainder."""
    count = -(-len(items) // size)
    small, larger = divmod(len(items), count)
    start = 0
    for chunk in range(count):
        end = start + small + (chunk < larger)
        yield list(items[start:end])
        start = end


def job_name(names: Sequence[str]) -> str:
    """A job's name in the launcher's messages: its first run's, and how many runs are stacked with it."""
    stacked = len(names) - 1
    return names[0] + (f" (+{stacked} stacked)" if stacked else "")


def _stack(runs: Sequence[Run]) -> Stack:
    """``runs`` as one job (a stack of one: its run's name and log)."""
    names = [run.name for run in runs]
    return Stack(name=job_name(names), members=tuple(runs), log=job_log_file([run.log for run in runs], names))


def stack_runs(runs: Sequence[Run], size: int, out: TextIO | None = None) -> list[Job]:
    """``runs`` as the jobs of ``--stack size``, in the grid's order: the runs to do in stacks of at most ``size``
    compatible runs (``size`` 1: stacks of one, every run alone), the others alone (done, resumed alone, or a norm or
    model that cannot stack)."""
    alone: dict[str, Namespace] = {}
    groups: dict[str, list[int]] = {}
    jobs: list[tuple[int, Job]] = []
    pinned = _interrupted_stacks(runs)
    for members in pinned:
        jobs.append((runs.index(members[0]), _stack(members)))
    taken = {run.name for members in pinned for run in members}
    for index, run in enumerate(runs):
        if run.name in taken:
            continue
        args = None if run.done or checkpoint_file([run.results]).exists() else run_arguments(run.argv)
        if args is None or stacking_problem(args) is not None:  # its norm or model cannot stack: it runs alone
            jobs.append((index, run))
            continue
        alone[run.name] = args
        groups.setdefault(_shared_arguments(args), []).append(index)
    for indices in groups.values():
        for chunk in even_chunks(indices, size):
            members = [runs[i] for i in chunk]
            problem = stack_problem(members, alone)
            if problem is not None:
                print(f"warning: runs {members[0].name} ... not stacked, each runs alone: {problem}", file=out)
                jobs += [(i, runs[i]) for i in chunk]
            else:
                jobs.append((chunk[0], _stack(members)))
    return [job for _, job in sorted(jobs, key=lambda pair: pair[0])]


def _interrupted_stacks(runs: Sequence[Run]) -> list[list[Run]]:
    """The stacks that an interrupted launch left checkpoints of (``FIRST.stack.ckpt``) whose members are all still
    to do here: they are packed again as they were, whatever ``--stack`` says now, so that they resume."""
    from normcl.utils.checkpoint import stack_members  # torch: where a stack left a checkpoint, not every launch

    by_name = {run.name: run for run in runs if not run.done}
    stacks: list[list[Run]] = []
    for run in by_name.values():
        path = stack_checkpoint_file(run.results)
        names = stack_members(path) if path.exists() else None
        if names and len(names) > 1 and names[0] == run.name and all(name in by_name for name in names):
            stacks.append([by_name[name] for name in names])
    return stacks


def stacking_text(jobs: Sequence[Job], size: int) -> str:
    """``=> --stack 4: 10 run(s) to do in 3 process(es)``."""
    todo = [job for job in jobs if not job.done]
    runs = sum(1 for job in todo for run in job.members if not run.done)
    return f"=> --stack {size}: {runs} run(s) to do in {len(todo)} process(es)"
