"""Executing one run, shared by the local scheduler and the Slurm jobs: its command, its lock, its process, and the
summary of what became of the grid's runs.

A run that diverged (its loss became NaN or infinite: a partial results file) is done: the same seed diverges at the
same step, so no launcher starts it again, and it is no failure; deleting its partial file runs it again.

A run is executed while holding an ``flock`` on a hidden lock file next to its results file, and the child process
inherits the lock, so a run left running by a killed launcher is waited for instead of started twice. A job is a run
alone or a stack of runs (``--stack``, :mod:`.stacks`), which holds the lock of each of its runs.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from normcl.utils.core.run_files import PARTIAL_SUFFIX, checkpoint_file
from normcl.utils.experiments.grid import Run
from normcl.utils.experiments.records import DIVERGED, describe_stop, read_stopped
from normcl.utils.experiments.stacks import Job, narrowed, run_arguments, stack_flags

CommandBuilder = Callable[[Job, int | None], list[str]]
"""Builds a job's command line; the second argument is the CPU thread count when the job goes to the CPU."""


def cpu_threads(workers: int) -> int:
    """``--num_threads`` of a CPU run: the cores shared by the parallel runs, so that they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // workers)


def pinned_threads(jobs: Iterable[Job]) -> int | None:
    """The most ``--num_threads`` that the jobs' own flags set (``--extra``, which comes after :func:`cpu_threads`'s
    value and wins), as ``utils/main.py``'s parser reads them, or ``None`` where no run sets it."""
    parsed = [run_arguments(run.argv) for job in jobs for run in job.members]
    return max((args.num_threads for args in parsed if args and args.num_threads), default=None)


MAIN_SCRIPT = Path(__file__).resolve().parents[1] / "main.py"
"""This package's entry point (``utils/main.py`` of the clone, or of an installed copy). A run starts it by path, not
as ``-m normcl.utils.main``, which would let a folder named ``normcl`` in the user's directory win."""


def default_command(job: Job, threads: int | None) -> list[str]:
    """``INTERPRETER utils/main.py FLAGS``; CPU placement adds ``--device cpu --num_threads N`` before the flags
    so that ``--extra`` can still override them, and a run interrupted earlier continues from its checkpoint. A
    stack trains its runs still to do (one left: its plain command) and continues from the stack's checkpoint."""

    cpu = ["--device", "cpu", "--num_threads", str(threads)] if threads is not None else []
    runs = [run for run in job.members if not run.done] or list(job.members)
    resume = ["--resume", "1"] if checkpoint_file([run.results for run in runs]).exists() else []
    return [runs[0].interpreter, str(MAIN_SCRIPT), *cpu, *stack_flags(runs), *resume]


class RunLock:
    """An exclusive ``flock`` on the lock file of each of a job's runs, held by whoever executes the job.

    The child process inherits the descriptors, so the locks outlive a launcher killed with ``kill -9`` for as long
    as its orphaned job keeps going, and a second launcher does not start those runs again.
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.fds: list[int] = []

    def acquire(self) -> bool:
        """``False`` when another process holds one of the locks (this one then holds none); ``True`` when this one
        holds them all, except those that the filesystem cannot lock (unprotected, as without these locks)."""
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                return False
            except OSError:
                os.close(fd)
                continue
            self.fds.append(fd)
        return True

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def claim(job: Job) -> tuple[str, RunLock | None]:
    """``("done", None)`` when all the job's runs are done, ``("busy", None)`` when another process holds the lock of
    one, else ``("claimed", lock)`` with their locks held. The results are looked for again under the lock: the
    process that just let go of it may have written them."""
    if job.done:
        return "done", None
    lock = RunLock(*(run.lock for run in job.members))
    if not lock.acquire():
        return "busy", None
    if job.done:
        lock.release()
        return "done", None
    return "claimed", lock


def start_run(job: Job, command: Sequence[str], env: dict[str, str], lock: RunLock, attempt: int) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr appended to the job's log (after a header line with the command); a
    stack's runs get a line in their own logs that says where their output went."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().isoformat(timespec="seconds")
    for run in (run for run in job.members if run.log != job.log):  # a stack's: each run's log says where it went
        with open(run.log, "a") as log:
            log.write(f"# {stamp} attempt {attempt}: stacked with {len(job.members) - 1} run(s), log {job.log}\n")
    with open(job.log, "a") as log:
        log.write(f"# {stamp} attempt {attempt}: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=job.workdir,
            pass_fds=tuple(lock.fds),
        )


RERUN_DIVERGED = f"a {DIVERGED} run is not started again; to run one again, delete its {PARTIAL_SUFFIX} file"


def divergence(run: Run) -> str:
    """Where a diverged run stopped, from its partial results file (``non-finite loss at step S, task T``)."""
    return describe_stop(read_stopped(run.partial))


@dataclass
class Summary:
    """What became of each run: done, skipped (results existed), diverged (now or before), failed (with its log)
    or interrupted."""

    done: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    interrupted: list[Run] = field(default_factory=list)
    submitted: list[tuple[Run, str]] = field(default_factory=list)
    diverged: list[Run] = field(default_factory=list)

    def skip(self, run: Run) -> None:
        """A run found done: skipped, or diverged when its done is a partial file."""
        (self.diverged if run.diverged else self.skipped).append(run)

    def skip_done(self, job: Job) -> Job | None:
        """Skip the job's runs that are done; the job without them, ``None`` when nothing is left to do."""
        todo = [run for run in job.members if not run.done]
        for run in job.members:
            if run.done:
                self.skip(run)
        return narrowed(job, todo) if todo else None

    def settle(self, job: Job, succeeded: bool) -> tuple[list[Run], list[Run]]:
        """Record the runs of a job whose process ended: done (it succeeded, or the run's results exist: a stack
        that failed after some of its runs finished) or diverged; returns the diverged runs and the failed ones."""
        diverged, failed = [], []
        for run in job.members:
            if run.diverged:
                diverged.append(run)
            elif succeeded or run.results.exists():
                self.done.append(run)
            else:
                failed.append(run)
        self.diverged += diverged
        return diverged, failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def format(self, title: str = "summary") -> str:
        parts = [f"{len(self.done)} done", f"{len(self.skipped)} skipped (results existed)"]
        parts.append(f"{len(self.failed)} failed")
        if self.diverged:
            parts.append(f"{len(self.diverged)} {DIVERGED} (non-finite loss, not rerun)")
        if self.interrupted:
            parts.append(f"{len(self.interrupted)} interrupted")
        if self.submitted:
            parts.append(f"{len(self.submitted)} submitted, not waited for")
        lines = [f"=> {title}: {', '.join(parts)}"]
        lines += [f"   failed: {run.name} ({why}); log: {run.log}" for run, why in self.failed]
        for run in self.diverged:
            lines.append(f"   {DIVERGED}: {run.name} ({divergence(run)}); partial results: {run.partial}")
        lines += [f"   interrupted: {run.name}; log: {run.log}" for run in self.interrupted]
        lines += [f"   submitted: {run.name} as job {job}; log: {run.log}" for run, job in self.submitted]
        if self.diverged:
            lines.append(f"   {RERUN_DIVERGED}")
        if self.interrupted:
            lines.append("   run the same command again to finish the missing runs")
        return "\n".join(lines)


def state(job: Job) -> str:
    """``done``, ``diverged`` or ``todo``: a job's state in ``--dry_run``'s listing."""
    return DIVERGED if job.diverged else "done" if job.done else "todo"


def done_text(runs: Sequence[Run]) -> str:
    """``N already done, M to run``, with ``(K diverged)`` after the done ones when some diverged."""
    done = sum(r.done for r in runs)
    diverged = sum(r.diverged for r in runs)
    of_which = f" ({diverged} {DIVERGED})" if diverged else ""
    return f"{done} already done{of_which}, {len(runs) - done} to run"


def print_runs(jobs: Iterable[Job], command: CommandBuilder) -> None:
    """``--dry_run``'s listing: each job's state and command."""
    for job in jobs:
        print(f"[{state(job)}] {job.name}: {shlex.join(command(job, None))}")


def confirm(count: int) -> bool:
    """Ask before starting, as the reference does, but only when someone can answer."""
    if not sys.stdin.isatty():
        return True
    try:
        answer = input(f"=> start {count} run(s)? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
