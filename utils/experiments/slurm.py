"""``--launcher slurm``: the runs as a submitit job array whose jobs run the same command as the local launcher (one
array job per stack with ``--stack``: ``--slurm_time`` and the other resources are a job's).

``--launcher submitit-local`` uses submitit's local executor instead of Slurm (tests).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from normcl.utils.experiments.processes import Summary, claim, cpu_threads, default_command, start_run
from normcl.utils.experiments.records import DIVERGED
from normcl.utils.experiments.stacks import Job, narrowed


def slurm_minutes(text: str) -> int:
    """Slurm time: ``MINUTES``, ``HH:MM:SS`` or ``D-HH:MM:SS``, as minutes for submitit's ``timeout_min``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text)
    if text.isdigit():
        return int(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not a Slurm time (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


@dataclass(frozen=True)
class JobOutcome:
    """What a submitit job reports back: ``state`` is done, skipped, busy, diverged or failed."""

    state: str
    detail: str = ""


def job_entry(run: Job, threads: int | None, attempt: int = 1) -> JobOutcome:
    """The function of each Slurm job: the job's command as a subprocess, exactly as the local launcher runs it."""
    state, lock = claim(run)
    if lock is None:
        return JobOutcome("skipped") if state == "done" else JobOutcome("busy", "running elsewhere")
    try:
        proc = start_run(run, default_command(run, threads), dict(os.environ), lock, attempt)
        code = proc.wait()
    finally:
        lock.release()
    if code == 0:
        return JobOutcome("done")
    return JobOutcome(DIVERGED) if run.diverged else JobOutcome("failed", f"exit code {code}")


def make_executor(args: Namespace, folder: Path) -> Any:
    """A submitit executor: Slurm, or submitit's local executor for ``--launcher submitit-local`` (tests)."""
    import submitit

    cluster = "slurm" if args.launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    gpus = args.slurm_gpus_per_job if cluster == "slurm" else 0
    executor.update_parameters(
        name="normcl",
        timeout_min=args.slurm_time,
        gpus_per_node=gpus,
        cpus_per_task=args.slurm_cpus_per_job,
        mem_gb=args.slurm_mem,
        slurm_partition=args.slurm_partition,
        slurm_array_parallelism=args.slurm_array_parallelism,
    )
    return executor


def _interrupt_jobs(args: Namespace, runs: Sequence[Job], jobs: Sequence[Any], summary: Summary, out: TextIO) -> None:
    """Ctrl-C: local jobs are cancelled; Slurm jobs keep going (they are resumable), and the message says how to
    cancel them."""
    if args.launcher == "slurm":
        ids = " ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
        print(f"=> interrupted; the jobs keep running on Slurm (cancel them with: scancel {ids})", file=out)
    else:
        for job in jobs:
            job.cancel(check=False)
        print("=> interrupted; the local jobs were cancelled", file=out)
    summary.interrupted += [member for run in runs for member in run.members]


def run_submitit(runs: Sequence[Job], args: Namespace, out: TextIO | None = None) -> Summary:
    """Submit the runs as one job array per attempt, wait for them (unless ``--no_wait``) and report their states."""
    out = out or sys.stdout
    executor = make_executor(args, Path(args.logdir).resolve() / "submitit")
    if args.launcher == "slurm":
        threads = None if args.slurm_gpus_per_job > 0 else args.slurm_cpus_per_job
    else:
        threads = cpu_threads(args.cpu_workers)
    summary = Summary()
    todo = [job for job in map(summary.skip_done, runs) if job is not None]
    for attempt in range(1, args.retries + 2):
        if not todo:
            break
        try:
            jobs = executor.map_array(job_entry, todo, [threads] * len(todo), [attempt] * len(todo))
        except Exception as e:  # submission itself failed (no sbatch, refused partition, ...)
            summary.failed += [(r, f"submission failed: {e}") for run in todo for r in run.members]
            return summary
        print(f"=> submitted {len(jobs)} job(s) (attempt {attempt}): {jobs[0].job_id} ...", file=out, flush=True)
        if args.no_wait:
            summary.submitted += [(r, j.job_id) for run, j in zip(todo, jobs, strict=True) for r in run.members]
            return summary
        retry: list[Job] = []
        for index, (run, job) in enumerate(zip(todo, jobs, strict=True)):
            try:
                outcome: JobOutcome = job.result()
            except KeyboardInterrupt:
                _interrupt_jobs(args, todo[index:], jobs[index:], summary, out)
                return summary
            except Exception as e:  # the job died: timeout, preemption, out of memory
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                outcome = JobOutcome("failed", f"job {job.job_id} {job.state}: {reason}")
            print(f"=> job {job.job_id} {run.name}: {job.state}, {outcome.state}", file=out, flush=True)
            if outcome.state in ("skipped", "busy"):
                for member in run.members:
                    summary.skip(member)
                continue
            if outcome.state == DIVERGED:  # deterministic: not retried
                summary.diverged += run.members
                continue
            _, failed = summary.settle(run, outcome.state == "done")  # a stack's diverged runs are not retried
            if failed and attempt <= args.retries:
                retry.append(narrowed(run, failed))
            else:
                summary.failed += [(member, outcome.detail) for member in failed]
        todo = retry
    return summary
