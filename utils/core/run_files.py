"""Every file a run leaves and every name it goes by, in one place, and the version of the results schema.

It imports nothing heavy, so that ``utils/main.py``, the launcher (``run.py``), the report, the scripts and the tests
name the same files cheaply: a run's name (the reference's scheme, a validation run's suffix, the default of a run
given none), the results file (mammoth's layout), the partial results of a run stopped by a non-finite loss, the
checkpoint of a run alone and of a stack (named after its first member), the launcher's lock beside the results, the
launcher's logs of a run and of a stack, the wall time of a grid's sittings beside its results, and the report's
figures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

RESULTS_FORMAT_VERSION = 1
"""The ``format_version`` of results files (``utils/results.py`` documents the schema)."""
PARTIAL_SUFFIX = ".partial.json"
"""Replaces ``.json`` in the name of a run that diverged: never the final name, so nothing mistakes it for one."""
STACK_LOG_SUFFIX = ".stack.txt"
"""A stack's log is named after its first member, as its checkpoint (``FIRST.stack.ckpt``)."""
STACK_CHECKPOINT_SUFFIX = ".stack.ckpt"
VALIDATION_SUFFIX = "_val"
"""Appended to the run, results and wandb names of ``--tune validation``'s phase-1 runs."""
SAFE_CHARACTERS = "A-Za-z0-9._+-"
"""What run names and file names keep; anything else is replaced."""
GRID_SECONDS = "grid_seconds.txt"
"""Beside a grid's results: one line per sitting of the grid's command, ``SECONDS HOST END``
(``scripts/reproduce_fmnist.sh`` writes it, the results page adds it up)."""
FIGURE_SEPARATOR = "__"
"""Between a report figure's kind and its column: ``accuracy_curve__seq-fmnist_er_ace_200.png``."""


def safe_name(text: str) -> str:
    """``text`` with each character outside :data:`SAFE_CHARACTERS` replaced by ``-`` (run names)."""
    return re.sub(f"[^{SAFE_CHARACTERS}]", "-", text)


def slug(text: str) -> str:
    """``text`` with each run of characters outside :data:`SAFE_CHARACTERS` replaced by ``_`` (figure names)."""
    return re.sub(f"[^{SAFE_CHARACTERS}]+", "_", text).strip("_")


def run_name(dataset: str, epochs: int, model: str, buffer: int | None, label: str, seed: int | None, mode: str) -> str:
    """The reference's run name: dataset, epochs, model, buffer, method (+ AdaB²N hyper-parameters), seed, mode."""
    buf = "none" if buffer is None else str(buffer)
    return safe_name(f"{dataset}_ep{epochs}_{model}_buf{buf}_{label}_seed{seed}_{mode}")


def default_name_stem(args: Any) -> str:
    """The name of a run given no ``--run_name``, but for when it started: :func:`run_name` of its parsed flags,
    with its norm as the method."""
    return run_name(args.dataset, args.n_epochs, args.model, args.buffer_size, args.nl, args.seed, args.buffer_mode)


def default_run_name(args: Any, started: datetime, pid: int | None = None) -> str:
    """The name of a run given no ``--run_name``: :func:`default_name_stem`, then when and in which process it
    started, so that two runs of one command never share a results file."""
    return f"{default_name_stem(args)}_{started:%Y%m%d-%H%M%S}_{os.getpid() if pid is None else pid}"


def results_file(args: Any) -> Path:
    """``{results_path}/{setting}/{dataset}/{model}/{run_name}.json``, mammoth's folder layout (``args``: parsed
    flags, or any object with those attributes)."""
    return Path(args.results_path) / args.setting / args.dataset / args.model / f"{args.run_name}.json"


def partial_results_file(results: Path) -> Path:
    """Where a run that failed (non-finite loss) leaves the results it had: never the final name."""
    return results.with_name(results.stem + PARTIAL_SUFFIX)


def is_partial_results(path: Path) -> bool:
    """Whether ``path`` is a :func:`partial_results_file`."""
    return path.name.endswith(PARTIAL_SUFFIX)


def final_results_file(partial: Path) -> Path:
    """The results file of the run whose partial results file is ``partial`` (the inverse of
    :func:`partial_results_file`)."""
    return partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX) + ".json")


def checkpoint_file(results: Sequence[Path]) -> Path:
    """The checkpoint of the runs trained together whose results files are ``results``, beside the first: a run
    alone's ``NAME.ckpt``; a stack's :func:`stack_checkpoint_file`, so a run alone never takes it for its own."""
    return results[0].with_suffix(".ckpt") if len(results) == 1 else stack_checkpoint_file(results[0])


def stack_checkpoint_file(first: Path) -> Path:
    """The checkpoint of a stack of several runs, named after its first member's results file ``first``."""
    return first.with_suffix(STACK_CHECKPOINT_SUFFIX)


def lock_file(results: Path) -> Path:
    """The launcher's hidden lock next to the results file: resume and the lock key on the same path."""
    return results.parent / f".{results.name}.lock"


def log_file(logdir: Path, name: str) -> Path:
    """The launcher's log of run ``name``."""
    return logdir / f"{name}.txt"


def job_log_file(logs: Sequence[Path], names: Sequence[str]) -> Path:
    """The launcher's log of runs trained in one process (their logs and names): a run alone's own; a stack's after
    its first member's log and name."""
    return logs[0] if len(logs) == 1 else logs[0].with_name(names[0] + STACK_LOG_SUFFIX)


def grid_seconds_file(results_dir: Path) -> Path:
    """The sittings of the grid whose results are under ``results_dir`` (:data:`GRID_SECONDS`)."""
    return results_dir / GRID_SECONDS


def figure_file(folder: Path, kind: str, column: str) -> Path:
    """A report figure of ``kind`` (``accuracy_curve``, ``norm_drift``...) for a table's ``column`` (its label)."""
    return folder / f"{kind}{FIGURE_SEPARATOR}{slug(column)}.png"


def figure_files(folder: Path, kind: str) -> list[Path]:
    """The report's figures of ``kind`` in ``folder``, by name."""
    return sorted(folder.glob(f"{kind}{FIGURE_SEPARATOR}*.png"))


def figure_column(figure: Path) -> str:
    """The column a :func:`figure_file` shows, as its name writes it."""
    return figure.stem.split(FIGURE_SEPARATOR, 1)[1]
