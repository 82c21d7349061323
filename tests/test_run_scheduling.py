"""``run.py``'s local scheduler: GPU placement, CPU workers, resuming an interrupted grid, locks, failures and
retries, with an injected GPU probe and a tiny child command instead of training.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from run_helpers import (  # _offline: importing the autouse fixture applies it to this module
    SMALL_GRID,
    _offline,  # noqa: F401
    fake_command,
    invocations,
    no_gpu,
    scheduler,
    small_runs,
    wait_until,
)

from normcl.utils.experiments.cli import main
from normcl.utils.experiments.grid import Run
from normcl.utils.experiments.processes import RunLock, Summary, start_run
from normcl.utils.experiments.scheduler import LocalScheduler, NoGpuError, allowed_gpus, choose_gpu, nvml_probe

# ----------------------------------------------------------------------------------------------- GPU placement


def test_choose_gpu_takes_the_freest_idle_gpu_with_room() -> None:
    usage = [(0, 0.5), (1, 0.05), (2, 0.2), (3, 0.01)]
    assert choose_gpu(usage, Counter(), 0.3, 1) == 3
    assert choose_gpu(usage, Counter({3: 1}), 0.3, 1) == 1
    assert choose_gpu(usage, Counter({3: 1}), 0.3, 2) == 3
    assert choose_gpu(usage, Counter({1: 1, 3: 1}), 0.3, 1) == 2
    assert choose_gpu(usage, Counter({1: 1, 2: 1, 3: 1}), 0.3, 1) is None
    assert choose_gpu(usage, Counter(), 0.01, 4) is None
    assert choose_gpu([], Counter(), 0.3, 1) is None


def test_allowed_gpus_follow_the_parents_cuda_visible_devices() -> None:
    assert allowed_gpus({}) is None
    assert allowed_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}) == {0, 2}
    assert allowed_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) is None


def test_nvml_probe_reports_gpus_or_no_gpu() -> None:
    try:
        usage = nvml_probe()
    except NoGpuError:
        return
    assert all(isinstance(i, int) and 0.0 <= u <= 1.0 for i, u in usage)


def test_runs_go_to_the_freest_gpus_within_max_per_gpu_and_keep_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMCL_PARENT_MARKER", "kept")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probes = Counter[str]()

    def probe() -> list[tuple[int, float]]:
        probes["calls"] += 1
        return [(0, 0.5), (1, 0.05), (2, 0.2)]

    runs = small_runs(tmp_path, "--num_seeds", "3")[:5]
    out = tmp_path / "out"
    sched = scheduler(runs, out, probe=probe, max_per_gpu=2)
    result: list[Summary] = []
    thread = threading.Thread(target=lambda: result.append(sched.run()))
    thread.start()
    try:
        wait_until(lambda: len(list(out.glob("*.env.json"))) == 4, "four runs started")
        calls = probes["calls"]
        wait_until(lambda: probes["calls"] >= calls + 3, "the launcher polled again for the fifth run")
        envs = {p.name[: -len(".1.env.json")]: json.loads(p.read_text()) for p in out.glob("*.env.json")}
        assert len(envs) == 4, "a fifth run started although every idle GPU had max_per_gpu runs"
        assert [envs[r.name]["CUDA_VISIBLE_DEVICES"] for r in runs[:4]] == ["1", "1", "2", "2"]
    finally:
        (out / "release").write_text("")
        thread.join()
    summary = result[0]
    assert [r.name for r in summary.done] == [r.name for r in runs]
    fifth = json.loads(next(out.glob(f"{runs[4].name}.1.env.json")).read_text())
    assert fifth["CUDA_VISIBLE_DEVICES"] in ("1", "2")
    for name in [r.name for r in runs]:
        env = json.loads((out / f"{name}.1.env.json").read_text())
        assert env["NORMCL_PARENT_MARKER"] == "kept"
        assert env["PATH"] == os.environ["PATH"] and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_without_gpus_runs_use_cpu_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_PARENT_MARKER", "kept")
    seen: list[int | None] = []
    base = fake_command(tmp_path / "out")

    def command(run: Run, threads: int | None) -> list[str]:
        seen.append(threads)
        return base(run, threads)

    (tmp_path / "out" / "release").write_text("")
    summary = scheduler(small_runs(tmp_path), tmp_path / "out", command=command, cpu_workers=2).run()
    assert len(summary.done) == 4 and summary.exit_code == 0
    assert seen == [max(1, (os.cpu_count() or 1) // 2)] * 4
    env = json.loads(next((tmp_path / "out").glob("*.env.json")).read_text())
    assert env["NORMCL_PARENT_MARKER"] == "kept"


@pytest.mark.parametrize(
    ("extra", "workers", "said", "warned"),
    [
        ((), 2, "2 worker(s) x 1 thread(s)", None),
        (
            ("--extra", "--num_threads 2"),
            2,
            "2 worker(s) x 2 thread(s)",
            "2 run(s) at once x 2 thread(s) ∣ use --cpu_workers 1",
        ),
        (("--extra=--num_threads=1",), 1, "1 worker(s) x 1 thread(s)", None),  # its share would be 2
        ((), 3, "3 worker(s) x 1 thread(s)", "3 run(s) at once x 1 thread(s) ∣ use --cpu_workers 2"),
        ((), 8, "8 worker(s) x 1 thread(s)", "4 run(s) at once x 1 thread(s) ∣ use --cpu_workers 2"),  # 4 runs
        # The run's own parser reads the flags: the last value wins, an abbreviation too.
        (
            ("--extra", "--num_threads 1 --num_thr 4"),
            1,
            "1 worker(s) x 4 thread(s)",
            "1 run(s) at once x 4 thread(s) ∣ lower --extra's --num_threads to 2 at most",
        ),
    ],
)
def test_cpu_workers_that_oversubscribe_the_cores_are_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...], workers: int, said: str, warned: str | None
) -> None:
    """On 2 cores, the runs at once times the threads a run gets (its share, or ``--extra``'s ``--num_threads``)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "release").write_text("")
    log = io.StringIO()
    runs = small_runs(tmp_path, *extra)
    command = fake_command(tmp_path / "out")
    LocalScheduler(runs, probe=no_gpu, command=command, coldsecs=0, cpu_workers=workers, out=log).run()
    lines = log.getvalue().splitlines()
    assert f"=> running on the CPU: {said}" in lines
    warnings = [line for line in lines if line.startswith("=> warning:")]
    if warned is None:
        assert warnings == []
    else:
        head, fix = warned.split(" ∣ ")
        tail = f"oversubscribe 2 core(s): the runs are slower, their results the same; {fix}"
        assert warnings == [f"=> warning: {head} {tail}"]


# ----------------------------------------------------------------------------------------------- resume, failures


def test_an_interrupted_grid_finishes_only_the_missing_runs(tmp_path: Path) -> None:
    runs = small_runs(tmp_path)
    for run in runs[:2]:
        run.results.parent.mkdir(parents=True, exist_ok=True)
        run.results.write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "release").write_text("")
    summary = scheduler(runs, out).run()
    assert invocations(out) == {r.name: 1 for r in runs[2:]}
    assert summary.skipped == runs[:2] and summary.done == runs[2:]
    again = scheduler(runs, out).run()
    assert again.skipped == runs and not again.done
    assert invocations(out) == {r.name: 1 for r in runs[2:]}


def test_a_run_in_flight_from_a_killed_launcher_is_not_started_again(tmp_path: Path) -> None:
    runs = small_runs(tmp_path)
    orphan = runs[1]
    lock = RunLock(orphan.lock)
    assert lock.acquire()
    out = tmp_path / "out"
    out.mkdir()
    (out / "release").write_text("")
    result: list[Summary] = []
    thread = threading.Thread(target=lambda: result.append(scheduler(runs, out).run()))
    thread.start()
    try:
        wait_until(lambda: all(r.results.exists() for r in runs if r is not orphan), "the other runs finished")
        orphan.results.parent.mkdir(parents=True, exist_ok=True)
        orphan.results.write_text("{}")
    finally:
        lock.release()
        thread.join()
    assert orphan.name not in invocations(out)
    assert result[0].skipped == [orphan] and len(result[0].done) == 3


def test_the_lock_is_held_by_the_child_after_the_launcher_lets_go(tmp_path: Path) -> None:
    run = small_runs(tmp_path)[0]
    out = tmp_path / "out"
    lock = RunLock(run.lock)
    assert lock.acquire()
    proc = start_run(run, fake_command(out)(run, None), dict(os.environ), lock, 1)
    lock.release()  # as if the launcher had been killed with kill -9
    other = RunLock(run.lock)
    try:
        assert not other.acquire(), "the orphaned run must keep its lock"
    finally:
        (out / "release").write_text("")
        assert proc.wait() == 0
    assert other.acquire()
    other.release()
    assert run.log.read_text().startswith("# ") and f"child {run.name} attempt 1" in run.log.read_text()


def test_a_failing_run_is_reported_and_the_rest_finish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), "--yes"]
    runs = small_runs(tmp_path)
    bad = runs[1]
    out = tmp_path / "out"
    command = fake_command(out, {bad.name: "fail"})
    (out / "release").write_text("")
    code = main([*argv, "--coldsecs", "0", "--waitsecs", "0"], probe=no_gpu, command=command)
    assert code == 1
    text = capsys.readouterr().out
    assert "3 done, 0 skipped (results existed), 1 failed" in text
    assert f"failed: {bad.name} (exit code 3); log: {bad.log}" in text
    assert all(r.results.exists() for r in runs if r is not bad) and not bad.results.exists()
    assert f"child {bad.name} attempt 1" in bad.log.read_text()
    assert main([*argv, "--coldsecs", "0", "--waitsecs", "0"], probe=no_gpu, command=command) == 1
    assert invocations(out)[bad.name] == 2 and invocations(out)[runs[0].name] == 1


def test_retries_rerun_a_failed_run(tmp_path: Path) -> None:
    runs = small_runs(tmp_path)
    out = tmp_path / "out"
    flaky = runs[0]
    command = fake_command(out, {flaky.name: "flaky", runs[1].name: "fail"})
    (out / "release").write_text("")
    summary = scheduler(runs, out, command=command, retries=2).run()
    assert invocations(out) == {flaky.name: 2, runs[1].name: 3, runs[2].name: 1, runs[3].name: 1}
    assert flaky in summary.done and [r for r, _ in summary.failed] == [runs[1]]
    assert flaky.log.read_text().count("# ") == 2 and summary.exit_code == 1


# ----------------------------------------------------------------------------------------------- diverged runs

RERUN_HINT = "   a diverged run is not started again; to run one again, delete its .partial.json file"


def test_a_diverged_run_is_done_not_retried_nor_a_failure_until_its_partial_file_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A NaN loss is deterministic: a run that left a partial file (an earlier sitting's without ``stopped``, or one
    diverging now) is never started again, and the grid still exits 0."""
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), "--yes"]
    argv += ["--coldsecs", "0", "--waitsecs", "0", "--retries", "2"]
    runs = small_runs(tmp_path)
    earlier, now = runs[0], runs[1]
    earlier.partial.parent.mkdir(parents=True)
    earlier.partial.write_text(json.dumps({"final": {"class_il_avg": None}}))  # written before "stopped" existed
    out = tmp_path / "out"
    command = fake_command(out, {now.name: "diverge"})
    (out / "release").write_text("")
    assert main(argv, probe=no_gpu, command=command) == 0
    text = capsys.readouterr().out
    assert "=> 4 run(s) in the grid: 1 already done (1 diverged), 3 to run\n" in text
    assert f"=> {now.name} diverged (non-finite loss at step 42, task 2); not retried, log {now.log}\n" in text
    summary = text[text.index("=> summary: ") :]
    assert summary.splitlines() == [
        "=> summary: 2 done, 0 skipped (results existed), 0 failed, 2 diverged (non-finite loss, not rerun)",
        f"   diverged: {earlier.name} (non-finite loss); partial results: {earlier.partial}",
        f"   diverged: {now.name} (non-finite loss at step 42, task 2); partial results: {now.partial}",
        RERUN_HINT,
    ]
    assert invocations(out) == {now.name: 1, runs[2].name: 1, runs[3].name: 1}
    assert earlier.done and now.done and now.diverged and not now.results.exists()

    assert main(argv, probe=no_gpu, command=command) == 0  # the next sitting starts nothing
    again = capsys.readouterr().out
    assert "=> 4 run(s) in the grid: 4 already done (2 diverged), 0 to run\n" in again
    assert "=> summary: 0 done, 2 skipped (results existed), 0 failed, 2 diverged (non-finite" in again
    assert invocations(out) == {now.name: 1, runs[2].name: 1, runs[3].name: 1}
    assert main([*argv, "--dry_run"], command=command) == 0
    listing = capsys.readouterr().out
    assert f"[diverged] {earlier.name}: " in listing and f"[diverged] {now.name}: " in listing
    assert listing.count("[done] ") == 2

    now.partial.unlink()  # as the summary says: delete the partial file to run it again
    assert main(argv, probe=no_gpu, command=fake_command(out)) == 0
    last = capsys.readouterr().out
    assert "=> summary: 1 done, 2 skipped (results existed), 0 failed, 1 diverged (non-finite" in last
    assert invocations(out)[now.name] == 2 and now.results.exists() and not now.diverged


def test_slurm_jobs_report_a_diverged_run_and_do_not_resubmit_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Through the Slurm path (submitit replaced by an executor that runs each job at once): a job whose run
    diverges is neither retried nor failed, and the next submission leaves the run out."""
    from normcl.utils.experiments import slurm

    class Job:
        def __init__(self, outcome: slurm.JobOutcome, index: int) -> None:
            self.outcome, self.job_id, self.state = outcome, f"7_{index}", "COMPLETED"

        def result(self) -> slurm.JobOutcome:
            return self.outcome

    class Executor:
        def map_array(self, fn: Callable[..., slurm.JobOutcome], *columns: list) -> list[Job]:
            return [Job(fn(*job), i) for i, job in enumerate(zip(*columns, strict=True))]

    runs = small_runs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "release").write_text("")
    monkeypatch.setattr(slurm, "make_executor", lambda args, folder: Executor())
    monkeypatch.setattr(slurm, "default_command", fake_command(out, {runs[1].name: "diverge"}))
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), "--yes"]
    argv += ["--launcher", "slurm", "--retries", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"=> job 7_1 {runs[1].name}: COMPLETED, diverged" in text
    assert "=> summary: 3 done, 0 skipped (results existed), 0 failed, 1 diverged (non-finite loss, not rerun)" in text
    assert f"   diverged: {runs[1].name} (non-finite loss at step 42, task 2); partial results:" in text
    assert RERUN_HINT in text and invocations(out) == {r.name: 1 for r in runs}
    assert main(argv) == 0
    assert "=> summary: 0 done, 3 skipped (results existed), 0 failed, 1 diverged" in capsys.readouterr().out
    assert invocations(out) == {r.name: 1 for r in runs}
