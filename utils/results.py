"""The results file of a run: one JSON document, written atomically.

A run that stops on a non-finite loss writes what it measured so far to
``{run_name}.partial.json`` instead, so launchers never mistake it for a
finished run, with ``"stopped": {"reason": "non-finite loss", "task": T, "step": S}``
(task 0-based, step 1-based over the run; files written before this entry lack it,
but a non-finite loss was then the only reason for a partial file too).

Format (``format_version`` 1)::

    {
      "format_version": 1,
      "name": run name, "args": every resolved argument,
      "setting": "class-il", "forward_mode": "separate" | "joint",
      "accuracy_matrix": {"class_il": [[...]], "task_il": [[...]]},
          # row i = after training task i, column j = accuracy (%) on task j;
          # null = not measured (future tasks; the superdiagonal is task j just
          # before it is trained, for forward transfer)
      "random_accuracy": {"class_il": [...], "task_il": [...]} | null,
      "final": {"class_il_avg", "task_il_avg", "forgetting", "bwt", "fwt",
                "task_il_forgetting", "task_il_bwt", "task_il_fwt",
                "aaa", "min_acc", "wc_acc", "task_il_aaa", "task_il_min_acc", "task_il_wc_acc"},
          # the last six after the last completed task, from the anytime curve; null without --eval_every (files
          # before them lack them)
      "norm_diagnostics": null | [per task: {"layers": {name: distances}, "summary": means}],
          # with --diagnose_norm 1: RMS distances of each layer's running mean/var to the
          # task-balanced and to the latest task's population statistics (utils/norm_diagnostics.py)
      "loss_curve": [[step, training loss], ...] | null,
          # what the model's steps return, read at every 25th step of an epoch and at its end (joint's stream
          # steps do not train: zeros); null in files of runs resumed from a checkpoint older than the curve
          # (checkpoint format 1); files before it lack it
      "anytime": null | {"curve": [{"step", "task", "end", "class_il": [...], "task_il": [...]}, ...],
                         "class_il": {"aaa": [...], "min_acc": [...], "wc_acc": [...]}, "task_il": {...}},
          # with --eval_every N: every N steps and at each task end (end: true), the accuracy on --eval_subset test
          # images of each task seen so far; the metrics after each task (utils/metrics.py: anytime_metrics); files
          # before it lack it
      "parameters_sha256": SHA-256 of the trained network's parameters | null (a run that did not complete),
      "data": {"folder": absolute path, "files": {name: {"bytes", "modified"}}} | null,
          # the dataset files the run read (modified: their mtime, UTC); null when the dataset does not say; files
          # before it lack it
      "timing": {"train_seconds": [...], "eval_seconds": [...], "total_seconds"},
      "environment": {"python", "torch", "torchvision", "numpy", "device", "threads", "cpu", "cpu_capability",
                      "kernel_limits", "git_commit", "git_dirty", "hostname"},
          # git_commit / git_dirty: the code the run started with (dirty: tracked .py files differ from the commit)
          # cpu, cpu_capability, kernel_limits, threads: what decides the kernels' rounding, which online training
          # amplifies: the same command gives other numbers on another CPU or thread count (files written before
          # these entries lack them)
      "created": ISO time
    }
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from argparse import Namespace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normcl.utils.core.atomic import atomic_write_bytes
from normcl.utils.core.run_files import RESULTS_FORMAT_VERSION
from normcl.utils.metrics import anytime_metrics, average_accuracy, backward_transfer, forgetting, forward_transfer
from normcl.utils.training import History

REPO_ROOT = Path(__file__).resolve().parent.parent


def _version(package: str) -> str | None:
    """A package's version without importing it (torchvision alone takes seconds to import)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git(*argv: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> dict[str, Any]:
    """The commit of the code and whether its tracked Python files differ from it (None: not a git checkout, e.g. a
    non-editable install, also one inside another project's repository, whose commit is not this code's).

    Taken when a run starts: the code it imported, even if the checkout moves on while it trains."""
    top = _git("rev-parse", "--show-toplevel")
    head = _git("rev-parse", "HEAD")
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO_ROOT.resolve():
        return {"git_commit": None, "git_dirty": None}
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return {"git_commit": None, "git_dirty": None}
    diff = _git("diff", "--quiet", "HEAD", "--", "*.py")
    dirty = None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1
    return {"git_commit": head.stdout.strip(), "git_dirty": dirty}


KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that change which CPU kernels torch, oneDNN and MKL run."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere, possibly empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_environment() -> dict[str, Any]:
    """The CPU, the kernel set torch dispatches to on it (``AVX512``, ``AVX2``, ``DEFAULT``...) and any limit set on
    the kernels: with the thread count, what makes a run's numbers differ between machines."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_limits": {name: os.environ[name] for name in KERNEL_LIMITS if name in os.environ},
    }


ANYTIME_METRICS = ("aaa", "min_acc", "wc_acc")
SETTINGS = ("class_il", "task_il")


def anytime_results(history: History) -> dict[str, Any] | None:
    """The anytime curve and, per setting, AAA, min-ACC and WC-ACC after each task (``normcl.utils.metrics``); ``None``
    without ``--eval_every``."""
    if not history.anytime:
        return None
    return {"curve": history.anytime, **{s: anytime_metrics(history.anytime, history.n_tasks, s) for s in SETTINGS}}


def _final_anytime(history: History, k: int) -> dict[str, float | None]:
    """AAA, min-ACC and WC-ACC after the last completed task (``task_il_`` prefixed for task-IL); ``None`` without
    ``--eval_every``."""
    anytime = anytime_results(history)
    out: dict[str, float | None] = {}
    for setting, prefix in zip(SETTINGS, ("", "task_il_"), strict=True):
        for name in ANYTIME_METRICS:
            out[prefix + name] = None if anytime is None or k == 0 else anytime[setting][name][k - 1]
    return out


def final_metrics(history: History) -> dict[str, float | None]:
    """Metrics over the tasks completed so far (all of them, unless the run stopped early)."""
    k = len(history.eval_seconds)
    names = ("class_il_avg", "task_il_avg", "forgetting", "bwt", "fwt", "task_il_forgetting", "task_il_bwt")
    if k == 0:
        return dict.fromkeys((*names, "task_il_fwt")) | _final_anytime(history, k)
    class_il = [row[:k] for row in history.class_il[:k]]
    task_il = [row[:k] for row in history.task_il[:k]]
    return {
        "class_il_avg": average_accuracy(class_il),
        "task_il_avg": average_accuracy(task_il),
        "forgetting": forgetting(class_il),
        "bwt": backward_transfer(class_il),
        "fwt": forward_transfer(class_il, history.random_class_il),
        "task_il_forgetting": forgetting(task_il),
        "task_il_bwt": backward_transfer(task_il),
        "task_il_fwt": forward_transfer(task_il, history.random_task_il),
        **_final_anytime(history, k),
    }


def build_results(
    args: Namespace,
    history: History,
    forward_mode: str,
    total_seconds: float,
    code: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document; ``code`` is ``code_version()`` as the run started, ``data`` the dataset's
    ``data_record()``."""
    random = None
    if history.random_class_il is not None:
        random = {"class_il": history.random_class_il, "task_il": history.random_task_il}
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "name": args.run_name,
        "args": vars(args),
        "setting": args.setting,
        "forward_mode": forward_mode,
        "accuracy_matrix": {"class_il": history.class_il, "task_il": history.task_il},
        "random_accuracy": random,
        "final": final_metrics(history),
        "norm_diagnostics": history.norm_diagnostics or None,
        "loss_curve": history.loss_curve,
        "anytime": anytime_results(history),
        "parameters_sha256": history.parameters_sha256,
        "data": data,
        "timing": {
            "train_seconds": history.train_seconds,
            "eval_seconds": history.eval_seconds,
            "total_seconds": total_seconds,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "numpy": np.__version__,
            "device": args.device,
            "threads": torch.get_num_threads(),
            **cpu_environment(),
            **code,
            "hostname": socket.gethostname(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_results(path: Path, results: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(results, indent=2, allow_nan=False) + "\n").encode())


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of the accuracy matrices and final metrics, printed at the end of a run."""
    lines = []
    for key, title in (("class_il", "Class-IL"), ("task_il", "Task-IL")):
        matrix = results["accuracy_matrix"][key]
        n = len(matrix)
        lines.append(f"{title} accuracy (%) — row: after task i, column: task j")
        lines.append("        " + "".join(f"{'T' + str(j + 1):>8}" for j in range(n)))
        for i, row in enumerate(matrix):
            cells = "".join(f"{'' if (v is None or j > i) else f'{v:.2f}':>8}" for j, v in enumerate(row))
            lines.append(f"{'T' + str(i + 1):>6}  {cells}")
    f = results["final"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines.append(
        f"Final: class-IL {fmt(f['class_il_avg'])} %  task-IL {fmt(f['task_il_avg'])} %  "
        f"forgetting {fmt(f['forgetting'])}  BWT {fmt(f['bwt'])}  FWT {fmt(f['fwt'])}"
    )
    return "\n".join(lines)
