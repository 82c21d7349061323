"""``run.py --stack K`` (issue 14): the grid's compatible runs packed into stacks of at most K, one process each.

The packing groups exactly the runs that ``utils/main.py`` can stack, leaves out the runs that are done, and gives
every member the flags of its run alone; real stacked grids (one plain, one ``--tune validation``) write every
member's results file under its name alone, and a relaunch skips them.
"""

from __future__ import annotations

import io
import json
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from run_helpers import (  # _offline: importing the autouse fixture applies it to this module
    SMALL_GRID,
    _offline,  # noqa: F401
    no_gpu,
)

from normcl.utils.args import parse_args
from normcl.utils.checkpoint import save_checkpoint
from normcl.utils.core.run_files import checkpoint_file
from normcl.utils.experiments.cli import main, parse_launcher_args
from normcl.utils.experiments.grid import Run, expand_grid, expand_test, expand_validation
from normcl.utils.experiments.processes import default_command
from normcl.utils.experiments.scheduler import execute
from normcl.utils.experiments.stacks import Stack, even_chunks, narrowed, stack_runs
from normcl.utils.experiments.tuning import select_from_validation
from normcl.utils.member_args import split_members

GRID = [
    "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "--num_seeds", "3",
    "--buffer_sizes", "200", "500", "--kappas", "0.4", "1.0", "--lambdas", "0.1", "--ada_t0s", "0", "--nowand",
]  # fmt: skip
TINY = "--samples_per_class 20 --nf 4 --non_verbose 1 --num_threads 1 --validation 1"
"""Tiny real runs (about 6 s alone on one core, 7 s as a stack of two)."""


def _grid(tmp_path: Path, grid: Sequence[str] = GRID, *extra: str) -> list[Run]:
    argv = [*grid, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), *extra]
    return expand_grid(parse_launcher_args(argv))


def _flag_items(flags: Sequence[str]) -> Counter[tuple[str, ...]]:
    """Each flag with its values, counted: two command lines that give the same flags the same values compare equal
    whatever their order."""
    items: list[list[str]] = []
    for token in flags:
        if token.startswith("--"):
            items.append([token])
        else:
            items[-1].append(token)
    return Counter(tuple(item) for item in items)


def _member_flags(stack: Stack) -> list[list[str]]:
    """Each member's flags in the stack's command: the shared ones, then its ``--member``'s."""
    shared, members = split_members(default_command(stack, 1)[2:])
    return [[*shared, *shlex.split(member)] for member in members]


def test_packing_groups_exactly_the_compatible_runs_to_do_in_stacks_of_at_most_k(tmp_path: Path) -> None:
    runs = _grid(tmp_path)
    assert len(runs) == 3 * 2 * 3
    by_name = {r.name: r for r in runs}
    done, diverged, resumed = runs[6 + 0], runs[12 + 3], runs[6 + 4]  # seed 1 BN 200, seed 2 and 1 AdaB2N
    done.results.parent.mkdir(parents=True)
    done.results.write_text("{}")
    diverged.partial.write_text("{}")
    checkpoint_file([resumed.results]).write_text("")  # a run interrupted alone resumes alone
    alone_jobs = stack_runs(runs, 1)  # a stack of one is its run: its name, log and command
    assert [job.members for job in alone_jobs] == [(run,) for run in runs]
    assert [(job.name, job.log) for job in alone_jobs] == [(run.name, run.log) for run in runs]
    assert [default_command(job, 1) for job in alone_jobs] == [default_command(run, 1) for run in runs]
    assert all("--member" not in default_command(run, 1) for run in runs)

    expected: dict[tuple, list[str]] = {}  # the runs to do of each column and method: configurations and seeds
    for run in runs:
        if run not in (done, diverged, resumed):
            expected.setdefault((run.key, run.method), []).append(run.name)
    for k in (2, 3, 4):
        jobs = stack_runs(runs, k)
        assert sorted(r.name for job in jobs for r in job.members) == sorted(by_name)
        chunks = [[names[i] for i in c] for names in expected.values() for c in even_chunks(range(len(names)), k)]
        stacks = [job for job in jobs if len(job.members) > 1]
        assert sorted([r.name for r in s.members] for s in stacks) == sorted(c for c in chunks if len(c) > 1)
        alone = {job.name for job in jobs if len(job.members) == 1}
        assert alone == {done.name, diverged.name, resumed.name} | {c[0] for c in chunks if len(c) == 1}
        assert all(len(s.members) <= k for s in stacks)
        for stack in stacks:
            assert stack.log == tmp_path / "logs" / f"{stack.members[0].name}.stack.txt"
            for member, flags in zip(stack.members, _member_flags(stack), strict=True):
                solo = default_command(member, 1)
                assert solo[:2] == default_command(stack, 1)[:2]
                assert _flag_items(flags) == _flag_items(solo[2:])
                assert vars(parse_args(flags)) == vars(parse_args(solo[2:]))
    assert Counter(len(s.members) for s in stack_runs(runs, 3) if len(s.members) > 1) == {3: 3, 2: 3}
    assert Counter(len(s.members) for s in stack_runs(runs, 2) if len(s.members) > 1) == {2: 6}
    assert [list(c) for c in even_chunks(range(7), 3)] == [[0, 1, 2], [3, 4], [5, 6]]

    stack = next(job for job in stack_runs(runs, 2) if len(job.members) > 1)
    assert "--resume" not in default_command(stack, None)
    checkpoint_file([run.results for run in stack.members]).write_text("")
    assert default_command(stack, None)[-2:] == ["--resume", "1"]
    one = narrowed(stack, stack.members[1:])
    assert default_command(one, 1) == default_command(stack.members[1], 1)  # a stack of one: the plain run


def test_runs_whose_model_cannot_stack_run_alone_without_a_warning(tmp_path: Path) -> None:
    """``joint`` declares no stacking: ``--stack`` runs its runs alone, as it must, and says nothing about it."""
    grid = ["--datasets", "seq-fmnist", "--models", "joint", "er_ace", "--methods", "BN", "--num_seeds", "2"]
    runs = _grid(tmp_path, [*grid, "--buffer_sizes", "200", "--nowand"])
    out = io.StringIO()
    jobs = stack_runs(runs, 2, out)
    assert sorted(job.name for job in jobs if len(job.members) == 1) == sorted(
        r.name for r in runs if r.model == "joint"
    )
    assert [[r.model for r in job.members] for job in jobs if len(job.members) > 1] == [["er_ace", "er_ace"]]
    assert out.getvalue() == ""


def test_configurations_stack_but_adab2n_and_its_renorm_variant_never_share_a_stack(tmp_path: Path) -> None:
    """A column's κ × λ × t0 configurations differ in their norm's options and ``--wandb_group``, which members may;
    ``--adab2n_renorm`` shapes the stacked layer for all members, so the two variants stack apart."""
    grid = [*GRID[: GRID.index("--methods") + 1], "AdaB2N", "AdaB2N-renorm", *GRID[GRID.index("--num_seeds") :]]
    runs = [r for r in _grid(tmp_path, grid) if r.seed == 0]
    stacks = stack_runs(runs, 4)
    assert sorted((job.members[0].method, len(job.members)) for job in stacks) == [
        ("AdaB2N", 2),
        ("AdaB2N", 2),
        ("AdaB2N-renorm", 2),
        ("AdaB2N-renorm", 2),
    ]
    for stack in stacks:
        assert isinstance(stack, Stack) and len({r.config for r in stack.members}) == 2
        for member, flags in zip(stack.members, _member_flags(stack), strict=True):
            assert vars(parse_args(flags)) == vars(parse_args(default_command(member, 1)[2:]))


def test_an_interrupted_stack_is_packed_again_as_it_was_whatever_k_is_now(tmp_path: Path) -> None:
    runs = [r for r in _grid(tmp_path) if r.method == "BN"]
    first, second = runs[0], runs[3]  # two runs an earlier --stack 2 had stacked
    first.results.parent.mkdir(parents=True, exist_ok=True)
    saved = {"args": [{"run_name": r.name} for r in (first, second)]}  # what a stack's checkpoint records of it
    save_checkpoint(checkpoint_file([first.results, second.results]), saved)
    for k in (3, 4):
        jobs = stack_runs(runs, k)
        pinned = [job for job in jobs if isinstance(job, Stack) and job.members[0] == first]
        assert [[r.name for r in job.members] for job in pinned] == [[first.name, second.name]]
        assert default_command(pinned[0], 1)[-2:] == ["--resume", "1"]
        assert sorted(r.name for job in jobs for r in job.members) == sorted(r.name for r in runs)
    second.results.write_text("{}")  # a member finished meanwhile: nothing to pin, the stacks are packed anew
    assert not any(isinstance(j, Stack) and j.members[0] == first and second in j.members for j in stack_runs(runs, 4))


def test_a_bad_stack_size_is_one_line_and_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main([*SMALL_GRID, "--stack", "0", "--dry_run"], probe=no_gpu) == 2
    assert capsys.readouterr().err == "error: --stack must be >= 1, got 0\n"
    assert main([*SMALL_GRID, "--extra", "--member '--seed 3'", "--dry_run"], probe=no_gpu) == 2
    assert "use --stack K" in capsys.readouterr().err


def _results(res: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in res.rglob("*.json")}


@pytest.mark.slow
def test_a_real_stacked_grid_writes_each_runs_results_as_alone_then_a_relaunch_skips_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--extra", TINY, "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0", "--yes"]
    argv += ["--results_path", str(res), "--logdir", str(logs)]
    runs = expand_grid(parse_launcher_args(argv))  # --stack 1: what each run writes alone
    assert main([*argv, "--stack", "3"], probe=no_gpu) == 0
    out = capsys.readouterr().out
    assert "=> --stack 3: 4 run(s) to do in 2 process(es)" in out
    assert "=> summary: 4 done, 0 skipped (results existed), 0 failed" in out
    docs = _results(res)
    assert sorted(docs) == sorted(r.results.name for r in runs)
    assert {r.results for r in runs} == set(res.rglob("*.json"))
    for run in runs:
        args = docs[run.results.name]["args"]
        solo = parse_args(list(run.argv))
        assert docs[run.results.name]["name"] == run.name
        for key in ("run_name", "wandb_name", "wandb_group", "seed", "nl", "kappa", "lambd", "lr", "nf", "validation"):
            assert args[key] == getattr(solo, key), key
        assert "stacked with 1 run(s), log " in run.log.read_text() and ".stack.txt" in run.log.read_text()
    stack_logs = sorted(p.name for p in logs.glob("*.stack.txt"))
    assert stack_logs == [f"{runs[i].name}.stack.txt" for i in (1, 0)]  # AdaB2N's seed 0, BN's seed 0
    assert main([*argv, "--stack", "3"], probe=no_gpu) == 0
    assert "=> summary: 0 done, 4 skipped (results existed), 0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_tune_validation_stacks_both_phases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Phase 1 runs for real, stacked (each configuration's two seeds); phase 2, whose test runs evaluate on the
    whole test set (slow), is checked at the command level: its chosen configuration's seeds form one stack."""
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [
        "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "AdaB2N", "--num_seeds", "2",
        "--buffer_sizes", "200", "--kappas", "0.4", "1.0", "--lambdas", "0.1", "--ada_t0s", "0", "--nowand",
        "--tune", "validation", "--tune_seeds", "0", "1", "--extra", TINY.replace(" --validation 1", ""),
        "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0", "--results_path", str(res), "--logdir", str(logs),
        "--yes", "--stack", "2",
    ]  # fmt: skip
    args = parse_launcher_args(argv)
    phase1 = expand_validation(args)
    summary = execute(phase1, args, no_gpu, default_command)
    assert "=> --stack 2: 4 run(s) to do in 2 process(es)" in capsys.readouterr().out
    assert sorted(r.name for r in summary.done) == sorted(r.name for r in phase1)
    assert sorted(p.name for p in res.rglob("*.json")) == sorted(r.results.name for r in phase1)
    assert len(list(logs.glob("*.stack.txt"))) == 2

    chosen = select_from_validation(phase1).chosen
    (stack,) = stack_runs(expand_test(args, chosen), 2)
    assert isinstance(stack, Stack) and [r.seed for r in stack.members] == [0, 1]
    assert {r.config for r in stack.members} == set(chosen.values())
    for member, flags in zip(stack.members, _member_flags(stack), strict=True):
        assert vars(parse_args(flags)) == vars(parse_args(default_command(member, 1)[2:]))
    assert main([*argv, "--dry_run"], probe=no_gpu) == 0
    out = capsys.readouterr().out
    assert out.count("[done]") == 4 and "=> --stack 2: 0 run(s) to do in 0 process(es)" in out  # phase 1
    assert f"[todo] {stack.name}: {shlex.join(default_command(stack, None))}" in out
    assert "=> --stack 2: 2 run(s) to do in 1 process(es)" in out  # phase 2


@pytest.mark.slow
def test_a_failing_stack_is_one_job_retried_once_then_each_of_its_runs_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A stack's unreadable checkpoint makes ``utils/main.py --resume 1`` fail at once (exit code 2), for real."""
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--methods", "BN", "--extra", TINY, "--coldsecs", "0", "--waitsecs", "0", "--yes"]
    argv += ["--results_path", str(res), "--logdir", str(logs), "--retries", "1", "--stack", "2"]
    runs = expand_grid(parse_launcher_args(argv))
    ckpt = checkpoint_file([run.results for run in runs])
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("not a checkpoint")
    assert main(argv, probe=no_gpu) == 1
    out = capsys.readouterr().out
    log = logs / f"{runs[0].name}.stack.txt"
    assert f"=> {runs[0].name} (+1 stacked) failed (exit code 2); retrying, log {log}" in out
    assert "=> summary: 0 done, 0 skipped (results existed), 2 failed" in out
    assert all(f"   failed: {r.name} (exit code 2); log: {r.log}" in out for r in runs)
    assert log.read_text().count(" attempt ") == 2 and "cannot be read" in log.read_text()
    assert all(r.log.read_text().count(f"stacked with 1 run(s), log {log}") == 2 for r in runs)
    assert not list(res.rglob("*.json"))
