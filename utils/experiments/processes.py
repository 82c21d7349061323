"""Executing one run, shared by the local scheduler and the Slurm jobs: its command, its lock, its process, and the
summary of what became of the grid's runs.

A run that diverged (its loss became NaN or infinite: a partial results file) is done: the same seed diverges at the
same step, so no launcher starts it again, and it is no failure; deleting its partial file runs it again.

A run is executed while holding an ``flock`` on a hidden lock file next to its results file, and the child process
inherits the lock, so a run left running by a killed launcher is waited for instead of started twice.
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

from utils.core.partial import PARTIAL_SUFFIX
from utils.experiments.grid import Run
from utils.experiments.records import DIVERGED, describe_stop, read_stopped

CommandBuilder = Callable[[Run, int | None], list[str]]
"""Builds a run's command line; the second argument is the CPU thread count when the run goes to the CPU."""


def cpu_threads(workers: int) -> int:
    """``--num_threads`` of a CPU run: the cores shared by the parallel runs, so that they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // workers)


MAIN_SCRIPT = Path(__file__).resolve().parents[2] / "utils" / "main.py"
"""This clone's entry point. A run starts it by path, not as ``-m utils.main``: from the user's directory, a package
named ``utils`` on PYTHONPATH would win over this clone's before its bootstrap could act."""


def default_command(run: Run, threads: int | None) -> list[str]:
    """``INTERPRETER utils/main.py FLAGS``; CPU placement adds ``--device cpu --num_threads N`` before the flags
    so that ``--extra`` can still override them, and a run interrupted earlier continues from its checkpoint."""
    from utils.checkpoint import checkpoint_file

    cpu = ["--device", "cpu", "--num_threads", str(threads)] if threads is not None else []
    resume = ["--resume", "1"] if checkpoint_file(run.results).exists() else []
    return [run.interpreter, str(MAIN_SCRIPT), *cpu, *run.argv, *resume]


class RunLock:
    """An exclusive ``flock`` on a run's lock file, held by whoever executes the run.

    The child process inherits the descriptor, so the lock outlives a launcher killed with ``kill -9`` for as long
    as its orphaned run keeps going, and a second launcher does not start that run again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """``False`` when another process holds the lock; ``True`` when this one does, or when the filesystem
        cannot lock (the run then goes ahead unprotected, as without this lock)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            return True
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim(run: Run) -> tuple[str, RunLock | None]:
    """``("done", None)`` when the run has results, ``("busy", None)`` when another process holds its lock, else
    ``("claimed", lock)`` with the lock held. The results are looked for again under the lock: the process that
    just let go of it may have written them."""
    if run.done:
        return "done", None
    lock = RunLock(run.lock)
    if not lock.acquire():
        return "busy", None
    if run.done:
        lock.release()
        return "done", None
    return "claimed", lock


def start_run(run: Run, command: Sequence[str], env: dict[str, str], lock: RunLock, attempt: int) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr appended to the run's log (after a header line with the command)."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "a") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"# {stamp} attempt {attempt}: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run.workdir,
            pass_fds=() if lock.fd is None else (lock.fd,),
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


def state(run: Run) -> str:
    """``done``, ``diverged`` or ``todo``: a run's state in ``--dry_run``'s listing."""
    return DIVERGED if run.diverged else "done" if run.done else "todo"


def done_text(runs: Sequence[Run]) -> str:
    """``N already done, M to run``, with ``(K diverged)`` after the done ones when some diverged."""
    done = sum(r.done for r in runs)
    diverged = sum(r.diverged for r in runs)
    of_which = f" ({diverged} {DIVERGED})" if diverged else ""
    return f"{done} already done{of_which}, {len(runs) - done} to run"


def print_runs(runs: Iterable[Run], command: CommandBuilder) -> None:
    """``--dry_run``'s listing: each run's state and command."""
    for run in runs:
        print(f"[{state(run)}] {run.name}: {shlex.join(command(run, None))}")


def confirm(count: int) -> bool:
    """Ask before starting, as the reference does, but only when someone can answer."""
    if not sys.stdin.isatty():
        return True
    try:
        answer = input(f"=> start {count} run(s)? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
