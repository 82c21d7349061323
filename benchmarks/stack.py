"""K whole online runs as one stack (``--member``) against the same K runs as separate processes.

The runs are a column's κ×λ grid: online Split Fashion-MNIST, er_ace with AdaB²N, buffer 500, ``--nf 20``, one
seed, K different (κ, λ). The separate runs are packed as ``run.py`` packs them on that device: on the CPU
``--workers`` processes at a time with ``cores / workers`` threads each (the launcher's ``--cpu_workers``), on a GPU
``--workers`` processes at a time on the one GPU (the launcher's ``--max_per_gpu``). The stack runs alone with all
the cores, or the members split into ``--stacks`` stacks run at once, each with its share of the cores (what
``run.py --stack`` does with as many workers). Peak memory comes from the kernel (``wait4``): the stacks' summed,
and the separate runs' summed.

Output: one JSON line with ``members``, ``stacked_s``, ``separate_s`` (wall seconds), ``speedup`` (separate /
stacked), ``peak_rss_mib_stacked``, ``peak_rss_mib_separate`` (summed), ``memory_ratio`` (stacked / separate),
``samples_per_class``, ``workers``, ``stacks``, ``extra`` (the flags added) and ``cores``, and the environment of the
first stack's process (``benchmarks/output.py``, ``ENVIRONMENT``, from a member's results file).

    python benchmarks/stack.py --members 8 [--samples_per_class 200] [--device cuda] [--workers 2] [--stacks 2]
        [--extra "..."]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from normcl.benchmarks.output import emit, parse, run_environment

REPO = Path(__file__).resolve().parent.parent
KAPPAS = (0.1, 0.4, 0.7, 1.0)
LAMBDAS = (0.01, 0.1, 1.0, 0.03, 0.3, 3.0, 0.001, 0.003)  # the paper's four first, then finer ones for K > 16
KEYS = (
    "members",
    "stacked_s",
    "separate_s",
    "speedup",
    "peak_rss_mib_stacked",
    "peak_rss_mib_separate",
    "memory_ratio",
    "samples_per_class",
    "workers",
    "stacks",
    "extra",
    "cores",
)
SMOKE = (
    "--members 1 --workers 1 --samples_per_class 10 --extra '--nf 2 --buffer_size 20 --validation 1 --num_threads 1'"
)


def member_flags(k: int) -> list[str]:
    """The first ``k`` (κ, λ) pairs of the grid, one member each."""
    pairs = list(itertools.islice(itertools.product(LAMBDAS, KAPPAS), k))
    return [f"--kappa {kappa} --lambd {lambd} --run_name m{i}" for i, (lambd, kappa) in enumerate(pairs)]


def shared(a: argparse.Namespace, results: Path, threads: int) -> list[str]:
    flags = ["--dataset", "seq-fmnist", "--model", "er_ace", "--nl", "AdaB2N", "--buffer_size", "500", "--nf", "20"]
    flags += ["--lr", "0.03", "--bs", "10", "--epochs", "1", "--seed", "0", "--nowand", "1", "--non_verbose", "1"]
    flags += ["--samples_per_class", str(a.samples_per_class), "--results_path", str(results)]
    flags += ["--ignore_other_metrics", "1", "--num_threads", str(threads)]
    flags += ["--device", a.device] if a.device else []
    return flags + a.extra.split()


def start(argv: list[str]) -> tuple[subprocess.Popen, tempfile._TemporaryFileWrapper]:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (read by finish(); a pipe left unread would block the child)
    cmd = [sys.executable, "utils/main.py", *argv]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    return proc, stderr


def finish(proc: subprocess.Popen, stderr: tempfile._TemporaryFileWrapper) -> float:
    """Wait for ``proc``; its peak resident memory in MiB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        stderr.seek(0)
        raise SystemExit(f"a run failed: {stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def run_separate(a: argparse.Namespace, members: list[str], results: Path) -> tuple[float, float]:
    """Wall time of the runs, ``--workers`` at a time, and the sum of their peak memories."""
    threads = max(1, (os.cpu_count() or 1) // a.workers) if a.device in (None, "cpu") else 1
    queue, running, peaks = list(members), [], []
    begin = time.perf_counter()
    while queue or running:
        while queue and len(running) < a.workers:
            running.append(start([*shared(a, results, threads), *queue.pop(0).split()]))
        peaks.append(finish(*running.pop(0)))
    return time.perf_counter() - begin, sum(peaks)


def run_stack(a: argparse.Namespace, members: list[str], results: Path) -> tuple[float, float]:
    """Wall time of the members as ``--stacks`` stacks at a time (each with its share of the cores, as
    ``run.py --stack`` packs them on ``--stacks`` workers), and the sum of their peak memories."""
    threads = max(1, (os.cpu_count() or 1) // a.stacks) if a.device in (None, "cpu") else 1
    parts = [members[i :: a.stacks] for i in range(a.stacks)]
    begin = time.perf_counter()
    running = []
    for part in parts:
        argv = shared(a, results, threads)
        for member in part:
            argv += ["--member", member]
        running.append(start(argv))
    peaks = [finish(*job) for job in running]
    return time.perf_counter() - begin, sum(peaks)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, required=True, help="K: runs in the stack")
    p.add_argument("--samples_per_class", type=int, default=200, help="training images per class of every run")
    p.add_argument("--device", default=None, help="torch device (default: utils/main.py's choice)")
    p.add_argument("--workers", type=int, default=None, help="separate runs at a time (default: cores; on a GPU 14)")
    p.add_argument("--stacks", type=int, default=1, help="the members split into this many stacks run at once")
    p.add_argument("--extra", default="", help="more flags for every run, e.g. '--channels_last 1'")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    a = parse(p, SMOKE, argv)
    if a.workers is None:
        a.workers = (os.cpu_count() or 1) if a.device in (None, "cpu") else 14
    if not 1 <= a.stacks <= a.members:
        p.error(f"--stacks must be between 1 and --members ({a.members}); got {a.stacks}")
    members = member_flags(a.members)
    with tempfile.TemporaryDirectory() as tmp:
        stacked_s, stacked_mib = run_stack(a, members, Path(tmp) / "stack")
        separate_s, separate_mib = run_separate(a, members, Path(tmp) / "separate")
        first = json.loads(sorted((Path(tmp) / "stack").rglob("*.json"))[0].read_text())
    result = {
        "members": a.members,
        "stacked_s": round(stacked_s, 1),
        "separate_s": round(separate_s, 1),
        "speedup": round(separate_s / stacked_s, 3),
        "peak_rss_mib_stacked": round(stacked_mib, 1),
        "peak_rss_mib_separate": round(separate_mib, 1),
        "memory_ratio": round(stacked_mib / separate_mib, 3),
        "samples_per_class": a.samples_per_class,
        "workers": a.workers,
        "stacks": a.stacks,
        "extra": a.extra,
        "cores": os.cpu_count(),
    }
    emit(result | run_environment(first))


if __name__ == "__main__":
    main()
