"""``--launcher local``: runs on idle GPUs found through NVML, or on CPU workers when there is none; and
:func:`execute`, which sends a list of runs to this scheduler or to Slurm.

A failing run does not stop the grid: ``--retries`` retries it, and the summary lists each failure with its log. A
run that diverges (non-finite loss: it left a partial results file) is not retried, nor counted as a failure. With
``--stack K`` a stack of runs is one job (one process, GPU slot, log and attempt count): a retry runs again those of
its runs that failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from argparse import Namespace
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from normcl.utils.experiments import slurm
from normcl.utils.experiments.grid import Run
from normcl.utils.experiments.processes import (
    CommandBuilder,
    RunLock,
    Summary,
    claim,
    cpu_threads,
    default_command,
    divergence,
    pinned_threads,
    start_run,
)
from normcl.utils.experiments.records import DIVERGED
from normcl.utils.experiments.stacks import Job, narrowed, stack_runs, stacking_text

POLL_SECONDS = 0.2
"""How often the local scheduler looks for finished processes."""

GpuProbe = Callable[[], list[tuple[int, float]]]
"""Returns ``(index, used memory fraction)`` for every GPU; raises :class:`NoGpuError` when there is none."""


class NoGpuError(RuntimeError):
    """NVML is missing or sees no GPU: the local launcher falls back to CPU workers."""


def nvml_probe() -> list[tuple[int, float]]:
    """Memory-use fraction of every GPU, through NVML (``pynvml``); :class:`NoGpuError` without a driver."""
    try:
        import pynvml
    except ImportError as e:
        raise NoGpuError(f"pynvml is not installed ({e})") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NoGpuError(f"NVML is not available ({e})") from None
    try:
        usage = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            usage.append((index, memory.used / memory.total))
        return usage
    except pynvml.NVMLError as e:
        raise NoGpuError(f"NVML query failed ({e})") from None
    finally:
        pynvml.nvmlShutdown()


def allowed_gpus(env: dict[str, str]) -> set[int] | None:
    """GPUs the parent's numeric ``CUDA_VISIBLE_DEVICES`` allows (``None``: all; UUID lists are not filtered)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    items = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in items):
        return None
    return {int(v) for v in items}


def choose_gpu(
    usage: Iterable[tuple[int, float]], ours: Counter[int], threshold: float, max_per_gpu: int
) -> int | None:
    """The freest GPU below ``threshold`` memory use that runs fewer than ``max_per_gpu`` of our runs."""
    candidates = [(used, ours[i], i) for i, used in usage if used < threshold and ours[i] < max_per_gpu]
    return min(candidates)[2] if candidates else None


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    lock: RunLock
    gpu: int | None


class LocalScheduler:
    """Starts jobs (runs, or stacks of runs) on idle GPUs (one ``CUDA_VISIBLE_DEVICES`` each) or, without GPUs, on
    ``cpu_workers`` CPU processes; ``probe`` and ``command`` are injectable so the placement logic can be tested
    without GPUs."""

    def __init__(
        self,
        runs: Sequence[Job],
        *,
        probe: GpuProbe = nvml_probe,
        command: CommandBuilder = default_command,
        max_per_gpu: int = 1,
        cpu_workers: int = 1,
        coldsecs: float = 15,
        waitsecs: float = 25,
        retries: int = 0,
        out: TextIO | None = None,
    ) -> None:
        self.runs = list(runs)
        self.probe = probe
        self.command = command
        self.max_per_gpu = max_per_gpu
        self.cpu_workers = cpu_workers
        self.coldsecs = coldsecs
        self.waitsecs = waitsecs
        self.retries = retries
        self.out = out or sys.stdout
        self.env = dict(os.environ)
        self.gpu_mode = False

    def _say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def _usage(self) -> list[tuple[int, float]]:
        """The probe's GPUs that the parent's ``CUDA_VISIBLE_DEVICES`` allows."""
        allowed = allowed_gpus(self.env)
        return [(i, u) for i, u in self.probe() if allowed is None or i in allowed]

    def _detect(self) -> None:
        try:
            usage = self._usage()
        except NoGpuError as e:
            usage = []
            self._say(f"=> no GPU: {e}")
        self.gpu_mode = bool(usage)
        if self.gpu_mode:
            self._say(f"=> GPUs {', '.join(str(i) for i, _ in usage)}; at most {self.max_per_gpu} run(s) per GPU")
        else:
            todo = [job for job in self.runs if not job.done]
            threads = pinned_threads(todo) or cpu_threads(self.cpu_workers)
            self._say(f"=> running on the CPU: {self.cpu_workers} worker(s) x {threads} thread(s)")
            cores, at_once = os.cpu_count() or 1, min(self.cpu_workers, len(todo))
            if at_once * threads > cores:  # --extra's --num_threads, or more workers than cores
                fix = (
                    f"use --cpu_workers {cores // threads}"
                    if threads <= cores
                    else f"lower --extra's --num_threads to {max(1, cores // at_once)} at most"
                )
                self._say(
                    f"=> warning: {at_once} run(s) at once x {threads} thread(s) oversubscribe {cores} core(s): the "
                    f"runs are slower, their results the same; {fix}"
                )

    def _slot(self, job: Job, running: list[_Running]) -> tuple[bool, int | None]:
        """(free, gpu): whether ``job`` can start now, and on which GPU (``None`` on the CPU)."""
        if not self.gpu_mode:
            return len(running) < self.cpu_workers, None
        ours = Counter(r.gpu for r in running if r.gpu is not None)
        try:
            usage = self._usage()
        except NoGpuError as e:
            self._say(f"=> GPU probe failed ({e}); trying again")
            usage = []
        gpu = choose_gpu(usage, ours, job.usage_threshold, self.max_per_gpu)
        return gpu is not None, gpu

    def _start(self, job: Job, gpu: int | None, lock: RunLock, attempt: int) -> _Running:
        env = dict(self.env)
        if gpu is not None:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's numbering
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            command = self.command(job, None)
        else:
            command = self.command(job, cpu_threads(self.cpu_workers))
        proc = start_run(job, command, env, lock, attempt)
        where = f"GPU {gpu}" if gpu is not None else "CPU"
        self._say(f"=> started {job.name} on {where} (attempt {attempt}, log {job.log})")
        return _Running(job, proc, lock, gpu)

    def run(self) -> Summary:
        summary = Summary()
        pending = deque(self.runs)
        running: list[_Running] = []
        deferred: list[Job] = []
        attempts: Counter[str] = Counter()
        waiting = False
        self._detect()
        try:
            while pending or running or deferred:
                self._reap(running, pending, attempts, summary)
                if pending:
                    job = pending[0]
                    if job.done:  # skipped at once, without waiting for a slot
                        pending.popleft()
                        summary.skip_done(job)
                        continue
                    free, gpu = self._slot(job, running)
                    if free:
                        waiting = False
                        pending.popleft()
                        state, lock = claim(job)
                        if state == "busy":
                            self._say(f"=> {job.name} is running in another launcher; waiting for it")
                            deferred.append(job)
                            continue
                        todo = summary.skip_done(job)  # a stack's runs done meanwhile are not run again
                        if lock is None or todo is None:
                            if lock is not None:
                                lock.release()
                            continue
                        job = todo
                        attempts[job.name] += 1
                        running.append(self._start(job, gpu, lock, attempts[job.name]))
                        time.sleep(self.coldsecs)
                        continue
                    if self.gpu_mode and not waiting:
                        self._say(f"=> waiting for an idle GPU (below {job.usage_threshold:.0%} memory use)")
                    waiting = self.gpu_mode
                    time.sleep(max(self.waitsecs, POLL_SECONDS) if self.gpu_mode else POLL_SECONDS)
                elif deferred and not running:
                    time.sleep(max(self.waitsecs, POLL_SECONDS))
                    pending.extend(deferred)
                    deferred.clear()
                else:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._say("=> interrupted: stopping the runs this launcher started")
            for item in running:
                item.proc.terminate()
            for item in running:
                try:
                    item.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    item.proc.kill()
                    item.proc.wait()
                item.lock.release()
                summary.interrupted += item.job.members
        return summary

    def _reap(self, running: list[_Running], pending: deque[Job], attempts: Counter[str], summary: Summary) -> None:
        for item in list(running):
            code = item.proc.poll()
            if code is None:
                continue
            running.remove(item)
            item.lock.release()
            job = item.job
            diverged, failed = summary.settle(job, code == 0)
            for run in diverged:  # deterministic: a retry would stop at the same step
                self._say(f"=> {run.name} {DIVERGED} ({divergence(run)}); not retried, log {run.log}")
            if not failed:
                if len(diverged) < len(job.members):
                    self._say(f"=> finished {job.name}")
            elif attempts[job.name] <= self.retries:
                self._say(f"=> {job.name} failed (exit code {code}); retrying, log {job.log}")
                pending.append(narrowed(job, failed))
            else:
                summary.failed += [(run, f"exit code {code}") for run in failed]
                self._say(f"=> {job.name} failed (exit code {code}); log {job.log}")


def execute(runs: Sequence[Run], args: Namespace, probe: GpuProbe, command: CommandBuilder) -> Summary:
    """Run ``runs`` with ``--launcher`` (the local scheduler, or a submitit job array), in stacks of ``--stack``."""
    jobs = stack_runs(runs, args.stack)
    if args.stack > 1:
        print(stacking_text(jobs, args.stack), flush=True)
    if args.launcher != "local":
        return slurm.run_submitit(jobs, args)
    return LocalScheduler(
        jobs,
        probe=probe,
        command=command,
        max_per_gpu=args.max_per_gpu,
        cpu_workers=args.cpu_workers,
        coldsecs=args.coldsecs,
        waitsecs=args.waitsecs,
        retries=args.retries,
    ).run()
