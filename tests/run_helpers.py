"""Shared helpers of the ``run.py`` tests (``test_run*.py``): the small grid, a fake child command, a GPU-less
probe, and the autouse ``_offline`` fixture, which each test module imports so that it applies there.

Scheduling tests use an injected GPU probe and a tiny child command (the interpreter running a ``-c`` script that
dumps its environment, optionally waits for a release file, and writes the run's results file, or its partial file
as ``utils/main.py`` does when the loss diverges), so they run without GPUs and without training.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from normcl.utils.experiments.cli import parse_launcher_args
from normcl.utils.experiments.grid import Run, expand_grid
from normcl.utils.experiments.scheduler import LocalScheduler, NoGpuError
from normcl.utils.experiments.stacks import Job

REPO = Path(__file__).resolve().parent.parent
SMALL_GRID = [
    "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "--num_seeds", "2",
    "--buffer_sizes", "200", "--kappas", "0.4", "--lambdas", "0.1", "--ada_t0s", "0", "--nowand",
]  # fmt: skip
FMNIST_BN = ["--datasets", "seq-fmnist", "--methods", "BN", "--num_seeds", "1", "--nowand"]

STOPPED = {"reason": "non-finite loss", "task": 1, "step": 42}
"""The ``stopped`` entry of the child's partial file in ``diverge`` mode: step 42, in the second task."""
CHILD = r"""
import json, os, sys, time
from pathlib import Path
out, results, partial, name, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:6]
count_file = out / f"{name}.count"
count = int(count_file.read_text()) + 1 if count_file.exists() else 1
count_file.write_text(str(count))
(out / f"{name}.{count}.env.json").write_text(json.dumps(dict(os.environ)))
while not (out / "release").exists():
    time.sleep(0.02)
print(f"child {name} attempt {count}")
if mode == "fail" or (mode == "flaky" and count == 1):
    sys.exit(3)
if mode == "diverge":
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"stopped": STOPPED}))
    sys.exit(3)
results.parent.mkdir(parents=True, exist_ok=True)
results.write_text("{}")
""".replace("STOPPED", repr(STOPPED))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")


def small_runs(tmp_path: Path, *extra: str) -> list[Run]:
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), *extra]
    return expand_grid(parse_launcher_args(argv))


def fake_command(out: Path, modes: dict[str, str] | None = None) -> Callable[[Job, int | None], list[str]]:
    """A command builder whose child, a job of one run, records its environment and writes the results file, or fails
    (``modes``: run name -> ``fail``, ``flaky`` (fails once), ``diverge`` (a partial file, exit code 3) or ``ok``)."""
    out.mkdir(parents=True, exist_ok=True)

    def build(job: Job, threads: int | None) -> list[str]:
        (run,) = job.members
        mode = (modes or {}).get(run.name, "ok")
        return [sys.executable, "-c", CHILD, str(out), str(run.results), str(run.partial), run.name, mode]

    return build


def invocations(out: Path) -> Counter[str]:
    """How many times the child ran for each run name."""
    return Counter({p.name[: -len(".count")]: int(p.read_text()) for p in out.glob("*.count")})


def flag(run: Run, name: str) -> str:
    """The value that a run's command line gives ``name``."""
    return run.argv[run.argv.index(name) + 1]


def no_gpu() -> list[tuple[int, float]]:
    raise NoGpuError("no GPU in this test")


def scheduler(runs: list[Run], out: Path, **kwargs) -> LocalScheduler:
    kwargs = {"probe": no_gpu, "command": fake_command(out), "coldsecs": 0, "waitsecs": 0, **kwargs}
    return LocalScheduler(runs, **kwargs)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll until ``condition`` holds; the generous limit only turns a hang into a failure."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)
