"""``run.py`` (``utils/experiments``): the paper's grid, GPU placement, resume, failures, and real CPU grids.

Scheduling tests use an injected GPU probe and a tiny child command (the interpreter running a ``-c`` script that
dumps its environment, optionally waits for a release file, and writes the run's results file), so they run
without GPUs and without training. The end-to-end tests train a real small grid on the CPU through the local
launcher and through submitit's local executor, then check the report.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from argparse import Namespace
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from matplotlib.image import imread

from utils.experiments import slurm
from utils.experiments.cli import RESERVED_EXTRA, main, parse_launcher_args
from utils.experiments.grid import Run, expand_grid, expand_test, expand_validation, validate_runs
from utils.experiments.methods import METHOD_ORDER, PSEUDO_METHODS, Config, method_flags, method_of, norm_of
from utils.experiments.processes import RunLock, Summary, default_command, start_run
from utils.experiments.records import load_records
from utils.experiments.report import write_report
from utils.experiments.scheduler import LocalScheduler, NoGpuError, allowed_gpus, choose_gpu, nvml_probe
from utils.experiments.selection import select_configs
from utils.experiments.tuning import select_from_validation
from utils.results import results_file

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_GRID = [
    "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "--num_seeds", "2",
    "--buffer_sizes", "200", "--kappas", "0.4", "--lambdas", "0.1", "--ada_t0s", "0", "--nowandb",
]  # fmt: skip
REAL_EXTRA = "--samples_per_class 30 --nf 8 --non_verbose 1 --num_threads 1 --validation 1"
"""The brief's extra flags plus ``--validation 1``: testing on 3 held-out images per class instead of the full test
set makes a run ~4x faster, and exercises the report's validation-based selection."""

CHILD = r"""
import json, os, sys, time
from pathlib import Path
out, results, name, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
count_file = out / f"{name}.count"
count = int(count_file.read_text()) + 1 if count_file.exists() else 1
count_file.write_text(str(count))
(out / f"{name}.{count}.env.json").write_text(json.dumps(dict(os.environ)))
while not (out / "release").exists():
    time.sleep(0.02)
print(f"child {name} attempt {count}")
if mode == "fail" or (mode == "flaky" and count == 1):
    sys.exit(3)
results.parent.mkdir(parents=True, exist_ok=True)
results.write_text("{}")
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")


def small_runs(tmp_path: Path, *extra: str) -> list[Run]:
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), *extra]
    return expand_grid(parse_launcher_args(argv))


def fake_command(out: Path, modes: dict[str, str] | None = None) -> Callable[[Run, int | None], list[str]]:
    """A command builder whose child records its environment and writes the results file (or fails)."""
    out.mkdir(parents=True, exist_ok=True)

    def build(run: Run, threads: int | None) -> list[str]:
        mode = (modes or {}).get(run.name, "ok")
        return [sys.executable, "-c", CHILD, str(out), str(run.results), run.name, mode]

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


# ----------------------------------------------------------------------------------------------- grid


def test_default_grid_is_the_papers() -> None:
    args = parse_launcher_args([])
    runs = expand_grid(args)
    per_seed = 3 * 2 * 2 * (5 + 32)
    assert per_seed == 444
    assert len(runs) == 3 * per_seed
    assert Counter(r.seed for r in runs) == {0: 444, 1: 444, 2: 444}
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert names == [r.name for r in expand_grid(parse_launcher_args([]))]
    assert all(r.name.replace(".", "").replace("-", "").replace("_", "").isalnum() for r in runs)

    seed0 = [r for r in runs if r.seed == 0]
    assert Counter(r.method for r in seed0) == {"BN": 12, "LN": 12, "IN": 12, "GN": 12, "CN": 12, "AdaB2N": 384}
    assert {(r.dataset, r.buffer_size) for r in seed0} == {
        ("seq-cifar10", 500), ("seq-cifar10", 2000), ("seq-cifar100", 2000), ("seq-cifar100", 5000),
        ("seq-miniimg", 2000), ("seq-miniimg", 5000),
    }  # fmt: skip
    for run in runs:
        argv = list(run.argv)
        value = dict(zip(argv, [*argv[1:], None], strict=True))
        assert argv[0] == "--load_best_args"
        assert value["--run_name"] == value["--wandb_name"] == run.name
        assert value["--epochs"] == "1" and value["--bs"] == "10" and value["--buffer_mode"] == "reservoir"
        assert value["--wandb_project"] == f"CL_{run.dataset}"
        assert ("--no_affine" in argv) == (run.method == "CN")
        assert run.usage_threshold == (0.1 if run.dataset == "seq-miniimg" else 0.3)
        spec = Namespace(
            results_path=Path("results").resolve(),
            setting="class-il",
            dataset=run.dataset,
            model=run.model,
            run_name=run.name,
        )
        assert run.results == results_file(spec)
        assert run.log == Path("data/logs").resolve() / f"{run.name}.txt"
    lambdas = {
        d: {flag(r, "--lambd") for r in seed0 if r.method == "AdaB2N" and r.dataset == d}
        for d in ("seq-cifar10", "seq-miniimg")
    }
    assert lambdas["seq-cifar10"] == {"0.01", "0.1", "1.0", "10.0"}
    assert lambdas["seq-miniimg"] == {"1e-05", "0.0001", "0.001", "0.01"}
    adab2n = [r for r in seed0 if r.method == "AdaB2N" and r.dataset == "seq-cifar10"]
    assert adab2n[0].name == "seq-cifar10_ep1_derpp_buf500_AdaB2N_kappa0.1_lambd0.01_ada0_seed0_reservoir"
    assert len({(r.model, r.buffer_size) for r in adab2n}) * 32 == len(adab2n)


def test_names_are_stable_and_encode_the_run(tmp_path: Path) -> None:
    a = small_runs(tmp_path, "--kappas", "1", "--lambdas", "10")
    b = small_runs(tmp_path / "elsewhere", "--kappas", "1.0", "--lambdas", "1e1")
    assert [r.name for r in a] == [r.name for r in b]
    assert {r.name for r in a} == {
        "seq-fmnist_ep1_er_ace_buf200_BN_seed0_reservoir",
        "seq-fmnist_ep1_er_ace_buf200_BN_seed1_reservoir",
        "seq-fmnist_ep1_er_ace_buf200_AdaB2N_kappa1.0_lambd10.0_ada0_seed0_reservoir",
        "seq-fmnist_ep1_er_ace_buf200_AdaB2N_kappa1.0_lambd10.0_ada0_seed1_reservoir",
    }
    ring = small_runs(tmp_path, "--buffer_mode", "ring", "--epochs", "2")
    assert all(r.name.endswith("_ring") and "_ep2_" in r.name for r in ring)


def test_pseudo_methods_and_registered_norms(tmp_path: Path) -> None:
    runs = small_runs(tmp_path, "--methods", "BN-joint", "AdaB2N-renorm", "BRN", "CN", "--num_seeds", "1")
    by_method = {r.method: r for r in runs}
    assert set(by_method) == {"BN-joint", "AdaB2N-renorm", "BRN", "CN"}
    joint = list(by_method["BN-joint"].argv)
    assert joint[joint.index("--nl") + 1] == "BN" and joint[joint.index("--forward_mode") + 1] == "joint"
    renorm = list(by_method["AdaB2N-renorm"].argv)
    assert renorm[renorm.index("--nl") + 1] == "AdaB2N" and renorm[renorm.index("--adab2n_renorm") + 1] == "1"
    assert "--kappa" in renorm and "AdaB2N-renorm_kappa0.4_lambd0.1_ada0" in by_method["AdaB2N-renorm"].name
    assert "--no_affine" in by_method["CN"].argv and "--no_affine" not in by_method["BRN"].argv
    validate_runs(runs)


def test_the_launchers_methods_come_back_as_the_reports_rows(tmp_path: Path) -> None:
    """One vocabulary: each of the report's rows is a method ``run.py`` can run, and its runs' flags, as
    ``utils/main.py`` resolves and records them, come back through the report's ``method_of`` as that row, with
    the same AdaB²N configuration."""
    from utils.args import parse_args

    runs = small_runs(tmp_path, "--methods", *METHOD_ORDER, "--num_seeds", "1")
    assert [r.method for r in runs] == list(METHOD_ORDER)
    for run in runs:
        recorded = vars(parse_args(list(run.argv)))
        assert method_of(recorded) == run.method
        assert recorded["nl"] == norm_of(run.method) and Config.of(recorded) == run.config
    assert set(PSEUDO_METHODS) == {"BN-joint", "AdaB2N-renorm"}
    for method, args in PSEUDO_METHODS.items():
        assert method_of(args) == method and method_flags(method)[:2] == ["--nl", args["nl"]]
        assert all(RESERVED_EXTRA[f"--{key}"] == f"--methods {method}" for key in args if key != "nl")
    assert Config(0.4, 1e-05, 1).flags() == ["--kappa", "0.4", "--lambd", "1e-05", "--ada_t0", "1"]
    assert Config(1, 0.1, 0).text() == "kappa 1.0, lambd 0.1, ada_t0 0" and Config(1, 0.1, 0) == (1.0, 0.1, 0)


def test_extra_goes_last_and_cpu_flags_first(tmp_path: Path) -> None:
    run = small_runs(tmp_path, "--extra", "--samples_per_class 30 --num_threads 1")[0]
    cmd = default_command(run, 4)
    assert cmd[:3] == [sys.executable, "-m", "utils.main"]
    assert cmd[3:7] == ["--device", "cpu", "--num_threads", "4"]
    assert cmd[-4:] == ["--samples_per_class", "30", "--num_threads", "1"]
    assert "--device" not in default_command(run, None)


def test_a_run_with_a_checkpoint_continues_from_it(tmp_path: Path) -> None:
    run = small_runs(tmp_path)[0]
    assert "--resume" not in default_command(run, None)
    run.results.parent.mkdir(parents=True)
    run.results.with_suffix(".ckpt").write_bytes(b"")
    assert default_command(run, None)[-2:] == ["--resume", "1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "seq-cifar11"], "unknown dataset 'seq-cifar11'"),
        (["--models", "derp"], "unknown model 'derp'"),
        (["--methods", "BatchNorm"], "unknown method 'BatchNorm'"),
        (["--num_seeds", "-1"], "--num_seeds must be >= 1"),
        (["--cpu_workers", "0"], "--cpu_workers must be >= 1"),
        (["--retries", "-2"], "--retries must be >= 0"),
        (["--kappas", "0.5", "1.5"], "--kappas must lie in [0, 1]"),
        (["--lambdas", "-1"], "--lambdas must be >= 0"),
        (["--extra", "--seed 3"], "--extra may not set --seed"),
        (["--extra", "--nf 8 --resume 1"], "--extra may not set --resume"),
        (["--tune", "validation", "--extra=--validation 1"], "--extra may not set --validation with --tune validation"),
        (["--tune", "validation", "--tune_seeds", "-1"], "--tune_seeds must be >= 0"),
        (["--tune", "validation", "--tune_seeds", "0", "0"], "the grid repeats a run"),
        (["--extra=--no_such_flag"], "unrecognized arguments: --no_such_flag"),
        (["--datasets", "seq-fmnist", "--buffer_sizes", "50"], "no best args for 'derpp' on 'seq-fmnist'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


FMNIST_BN = ["--datasets", "seq-fmnist", "--methods", "BN", "--num_seeds", "1", "--nowandb"]
NO_BEST_ARGS_HINT = 'give the runs their hyper-parameters yourself: --no_best_args --extra "--lr 0.03"'


def test_missing_best_args_are_one_line_in_run_py_flags(capsys: pytest.CaptureFixture) -> None:
    """``utils/main.py``'s own error says to drop ``--load_best_args``, which ``run.py`` sets itself: the grid is
    checked first and the error names ``run.py``'s flags."""
    assert main([*FMNIST_BN, "--models", "er_ace", "derpp", "--buffer_sizes", "200", "50", "--dry_run"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == (
        "error: no best args for 'er_ace' on 'seq-fmnist' with buffer size 50; choose --buffer_sizes among 200, 500, "
        f"2000, or {NO_BEST_ARGS_HINT}"
    )
    assert main([*FMNIST_BN, "--models", "joint", "--dry_run"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == f"error: no best args for 'joint' on 'seq-fmnist'; {NO_BEST_ARGS_HINT}"
    assert main([*FMNIST_BN, "--models", "er_ace", "--buffer_sizes", "50", "--no_best_args", "--dry_run"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: --no_best_args needs the runs' hyper-parameters in --extra, at least --lr")
    assert main([*FMNIST_BN, "--extra=--load_best_args", "--dry_run"]) == 2
    assert "unless --no_best_args" in capsys.readouterr().err


def test_no_best_args_takes_the_hyper_parameters_from_extra(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from utils.args import parse_args

    argv = [*FMNIST_BN, "--models", "er_ace", "derpp", "--buffer_sizes", "50", "--no_best_args"]
    argv += ["--extra", "--lr 0.05 --alpha 0.2", "--results_path", str(tmp_path / "res"), "--dry_run"]
    assert main(argv) == 0
    assert "=> 2 run(s)" in capsys.readouterr().out
    runs = expand_grid(parse_launcher_args(argv))
    assert [r.name for r in runs] == [f"seq-fmnist_ep1_{m}_buf50_BN_seed0_reservoir" for m in ("er_ace", "derpp")]
    for run in runs:
        assert "--load_best_args" not in run.argv
        resolved = parse_args(list(run.argv))
        assert (resolved.lr, resolved.alpha, resolved.buffer_size, resolved.load_best_args) == (0.05, 0.2, 50, 0)
    assert "--load_best_args" in expand_grid(parse_launcher_args([*FMNIST_BN, "--buffer_sizes", "200"]))[0].argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--launcher", "pbs"], "invalid choice: 'pbs'"),
        (["--num_seeds", "two"], "invalid int value: 'two'"),
        (["--tune", "test"], "invalid choice: 'test'"),
    ],
)
def test_malformed_flags_are_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_the_runs_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [*SMALL_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), "--dry_run"]
    assert main(argv, probe=no_gpu, command=fake_command(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "=> 4 run(s)" in out
    assert out.count("[todo] seq-fmnist_ep1_er_ace_buf200_") == 4
    assert not (tmp_path / "res").exists() and not (tmp_path / "logs").exists()
    assert not invocations(tmp_path / "out")


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


# ----------------------------------------------------------------------------------------------- --tune validation

TUNE_GRID = [
    "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "AdaB2N-renorm",
    "--num_seeds", "2", "--buffer_sizes", "200", "500", "--kappas", "0.4", "1.0", "--lambdas", "0.1",
    "--ada_t0s", "0", "--nowandb", "--tune", "validation",
]  # fmt: skip
CONFIG_A, CONFIG_B = (0.4, 0.1, 0), (1.0, 0.1, 0)


def tune_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [*TUNE_GRID, "--results_path", str(tmp_path / "res"), "--logdir", str(tmp_path / "logs"), *extra]


def write_results(run: Run, final: float) -> None:
    """A results file with what ``utils.report`` reads, at ``run``'s results path, whose final class-IL accuracy
    is ``final``."""
    kappa, lambd, ada_t0 = run.config or (1.0, 0.0, 0)
    args = {
        "dataset": run.dataset, "model": run.model, "buffer_size": run.buffer_size, "nl": flag(run, "--nl"),
        "seed": run.seed, "validation": int(run.validation), "adab2n_renorm": int("--adab2n_renorm" in run.argv),
        "kappa": kappa, "lambd": lambd, "ada_t0": ada_t0, "n_epochs": 1, "batch_size": 10,
    }  # fmt: skip
    matrix = [[final, None], [final, final]]
    doc = {
        "name": run.name,
        "args": args,
        "setting": "class-il",
        "accuracy_matrix": {"class_il": matrix, "task_il": matrix},
        "final": {"class_il_avg": final, "task_il_avg": final, "forgetting": 0.0},
    }
    run.results.parent.mkdir(parents=True, exist_ok=True)
    run.results.write_text(json.dumps(doc))


def test_tune_validation_phase_1_is_adab2n_on_the_validation_split_for_the_tune_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = parse_launcher_args(tune_argv(tmp_path))
    phase1 = expand_validation(args)
    assert len(phase1) == 2 * 2  # buffers x configs, seed 0 only
    assert {(r.method, r.seed, r.validation) for r in phase1} == {("AdaB2N", 0, True)}
    assert {(r.buffer_size, r.config) for r in phase1} == {(b, c) for b in (200, 500) for c in (CONFIG_A, CONFIG_B)}
    assert phase1[0].name == "seq-fmnist_ep1_er_ace_buf200_AdaB2N_kappa0.4_lambd0.1_ada0_seed0_reservoir_val"
    test_names = {r.name for r in expand_grid(args)}
    for run in phase1:
        assert run.name.endswith("_val") and run.name[: -len("_val")] in test_names
        assert flag(run, "--validation") == "1" and "--adab2n_renorm" not in run.argv
        assert flag(run, "--run_name") == flag(run, "--wandb_name") == run.name
        assert flag(run, "--wandb_group").endswith("_val") and run.results.name == f"{run.name}.json"
    more = expand_validation(parse_launcher_args(tune_argv(tmp_path, "--tune_seeds", "3", "5")))
    assert Counter(r.seed for r in more) == {3: 4, 5: 4}
    only_renorm = tune_argv(tmp_path, "--methods", "BN", "AdaB2N-renorm")
    assert {r.method for r in expand_validation(parse_launcher_args(only_renorm))} == {"AdaB2N"}

    assert main([*tune_argv(tmp_path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "=> phase 1: 4 AdaB2N validation run(s) (seeds 0): 0 already done, 4 to run" in out
    assert out.count("[todo] ") == 4 + 4  # phase 1, then BN x 2 seeds x 2 buffers
    assert out.count("_reservoir_val: ") == 4 and out.count(" --validation 1 ") == 4
    for buffer in (200, 500):
        later = f"[later] seq-fmnist er_ace {buffer} AdaB2N, AdaB2N-renorm x 2 seed(s): (config chosen after the "
        assert later + "validation runs)" in out
    assert "=> 4 validation run(s) + 12 test run(s)" in out
    assert not (tmp_path / "res").exists() and not (tmp_path / "logs").exists()


def test_tune_validation_runs_each_columns_validation_choice_for_adab2n_and_renorm(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = tune_argv(tmp_path, "--yes", "--coldsecs", "0", "--waitsecs", "0")
    args = parse_launcher_args(argv)
    accuracy = {(200, CONFIG_A): 50.0, (200, CONFIG_B): 60.0, (500, CONFIG_A): 70.0, (500, CONFIG_B): 40.0}
    for run in expand_validation(args):
        write_results(run, accuracy[(run.buffer_size, run.config)])
    out = tmp_path / "out"
    command = fake_command(out)
    (out / "release").write_text("")
    assert main(argv, probe=no_gpu, command=command) == 0
    text = capsys.readouterr().out
    assert "=> phase 1 (validation) summary: 0 done, 4 skipped (results existed), 0 failed" in text
    assert "=> seq-fmnist er_ace 200: AdaB2N runs kappa 1.0, lambd 0.1, ada_t0 0 (mean validation class-IL" in text
    assert "=> seq-fmnist er_ace 500: AdaB2N runs kappa 0.4, lambd 0.1, ada_t0 0 (mean validation class-IL" in text
    assert "=> phase 2 (test) summary: 12 done, 0 skipped (results existed), 0 failed" in text
    chosen = {("seq-fmnist", "er_ace", 200): CONFIG_B, ("seq-fmnist", "er_ace", 500): CONFIG_A}
    phase2 = expand_test(args, chosen)
    assert invocations(out) == {r.name: 1 for r in phase2}
    adaptive = [r for r in phase2 if r.method != "BN"]
    assert Counter((r.method, r.buffer_size, r.config) for r in adaptive) == {
        ("AdaB2N", 200, CONFIG_B): 2, ("AdaB2N-renorm", 200, CONFIG_B): 2,
        ("AdaB2N", 500, CONFIG_A): 2, ("AdaB2N-renorm", 500, CONFIG_A): 2,
    }  # fmt: skip
    assert "seq-fmnist_ep1_er_ace_buf200_AdaB2N-renorm_kappa1.0_lambd0.1_ada0_seed1_reservoir" in invocations(out)

    assert main(argv, probe=no_gpu, command=command) == 0  # resume: the same choice, nothing to run
    again = capsys.readouterr().out
    assert "=> phase 2 (test) summary: 0 done, 12 skipped (results existed), 0 failed" in again
    assert invocations(out) == {r.name: 1 for r in phase2}
    assert main([*argv, "--dry_run"], command=command) == 0
    listing = capsys.readouterr().out
    assert "[later]" not in listing and listing.count("[done] ") == 4 + 12
    assert "=> phase 2: 12 test run(s): 12 already done, 0 to run\n" in listing

    for run in phase2:
        write_results(run, 45.0 + run.seed)
    files = write_report(tmp_path / "res", plots=False)
    for method in ("AdaB2N", "AdaB2N-renorm"):
        note = "validation" if method == "AdaB2N" else "AdaB2N's validation choice"
        assert f"| {method} | seq-fmnist er_ace 200 | 1 | 0.1 | 0 | {note} |" in files.text
        assert f"| {method} | seq-fmnist er_ace 500 | 0.4 | 0.1 | 0 | {note} |" in files.text
    assert "optimistic" not in files.text and "no validation runs" not in files.text


def test_tune_validation_without_a_columns_validation_results_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = tune_argv(tmp_path, "--yes", "--coldsecs", "0", "--waitsecs", "0")
    args = parse_launcher_args(argv)
    phase1 = expand_validation(args)
    failing, unreadable = [r for r in phase1 if r.buffer_size == 200]
    for run in phase1:
        if run.buffer_size == 500:
            write_results(run, 50.0 + run.config[0])
    unreadable.results.write_text("{}")
    out = tmp_path / "out"
    command = fake_command(out, {failing.name: "fail"})
    (out / "release").write_text("")
    assert main(argv, probe=no_gpu, command=command) == 1
    captured = capsys.readouterr()
    assert f"failed: {failing.name} (exit code 3); log: {failing.log}" in captured.out
    (error,) = captured.err.strip().splitlines()
    assert error.startswith("error: no AdaB2N configuration for seq-fmnist er_ace 200, so its AdaB2N runs were not ")
    assert f"{failing.name} (no results; log {failing.log})" in error
    assert f"{unreadable.name} (skipped {unreadable.results}: not a results file" in error
    assert "run the same command again" in error
    started = invocations(out)
    assert started[failing.name] == 1
    assert {n for n in started if n != failing.name} == {
        r.name for r in expand_test(args, {("seq-fmnist", "er_ace", 500): CONFIG_B})
    }
    assert not any("_buf200_AdaB2N" in n and not n.endswith("_val") for n in started)


def test_tune_validation_with_no_wait_leaves_phase_2_to_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    submitted: list[list[str]] = []

    def submit(runs: list[Run], args: Namespace) -> Summary:
        submitted.append([r.name for r in runs])
        return Summary(submitted=[(r, f"7_{i}") for i, r in enumerate(runs)])

    monkeypatch.setattr(slurm, "run_submitit", submit)
    assert main(tune_argv(tmp_path, "--yes", "--launcher", "slurm", "--no_wait")) == 0
    assert len(submitted) == 1 and len(submitted[0]) == 4 and all(n.endswith("_val") for n in submitted[0])
    assert "run the same command again once the validation jobs have finished" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- real grids


def _check_real_results(res: Path, logs: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((res / "class-il" / "seq-fmnist" / "er_ace").glob("*.json"))]
    assert len(docs) == 4
    assert sorted((d["args"]["nl"], d["args"]["seed"]) for d in docs) == [
        ("AdaB2N", 0), ("AdaB2N", 1), ("BN", 0), ("BN", 1),
    ]  # fmt: skip
    for d in docs:
        assert d["args"]["load_best_args"] == 1 and d["args"]["buffer_size"] == 200 and d["args"]["nowand"] == 1
        assert (logs / f"{d['name']}.txt").exists()
        if d["args"]["nl"] == "AdaB2N":
            assert (d["args"]["kappa"], d["args"]["lambd"], d["args"]["ada_t0"]) == (0.4, 0.1, 0)
    return docs


def _check_report(res: Path, docs: list[dict]) -> None:
    files = write_report(res)
    for name in ("BN", "AdaB2N"):
        values = [d["final"]["class_il_avg"] for d in docs if d["args"]["nl"] == name]
        assert len(values) == 2
        assert f"| {name} | {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (2) †" in files.text
    rows = files.csv.read_text().splitlines()
    assert len(rows) == 3
    assert rows[1].startswith("BN,seq-fmnist,er_ace,200,,2,0 1,")
    assert rows[2].startswith("AdaB2N,seq-fmnist,er_ace,200,,2,0 1,") and ",0.4,0.1,0,validation," in rows[2]
    assert len(files.plots) == 2
    for png in files.plots:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert imread(png).ndim == 3


def test_real_grid_on_the_cpu_through_run_py_then_resume(tmp_path: Path) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--extra", REAL_EXTRA, "--cpu_workers", "2", "--coldsecs", "0", "--waitsecs", "0"]
    argv += ["--results_path", str(res), "--logdir", str(logs), "--yes"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=> summary: 4 done, 0 skipped (results existed), 0 failed" in proc.stdout
    docs = _check_real_results(res, logs)
    assert all(d["args"]["device"] == "cpu" for d in docs) or "=> GPUs" in proc.stdout
    _check_report(res, docs)
    assert main(argv, probe=no_gpu) == 0
    assert [p.name for p in sorted(res.rglob("*.json"))] == [d["name"] + ".json" for d in docs]


def test_real_run_of_a_buffer_size_without_best_args(tmp_path: Path) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*FMNIST_BN, "--models", "er_ace", "--buffer_sizes", "50", "--no_best_args", "--yes", "--coldsecs", "0"]
    argv += ["--extra", f"--lr 0.05 {REAL_EXTRA}", "--results_path", str(res), "--logdir", str(logs)]
    assert main(argv, probe=no_gpu) == 0
    (path,) = res.rglob("*.json")
    args = json.loads(path.read_text())["args"]
    assert (args["load_best_args"], args["lr"], args["buffer_size"], args["nl"]) == (0, 0.05, 50, "BN")


def test_real_grid_through_submitit_local_executor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--extra", REAL_EXTRA, "--cpu_workers", "2", "--launcher", "submitit-local"]
    argv += ["--results_path", str(res), "--logdir", str(logs), "--yes", "--slurm_time", "20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(": FINISHED, done") == 4
    assert "=> summary: 4 done, 0 skipped (results existed), 0 failed" in out
    assert (logs / "submitit").is_dir()
    docs = _check_real_results(res, logs)
    assert {d["environment"]["threads"] for d in docs} == {1}
    _check_report(res, docs)


def test_real_tune_validation_grid_chooses_on_validation_then_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [
        "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "--num_seeds", "1",
        "--buffer_sizes", "200", "--kappas", "0.4", "1.0", "--lambdas", "0.1", "--ada_t0s", "0", "--nowandb",
        "--tune", "validation", "--extra", REAL_EXTRA.replace(" --validation 1", ""), "--launcher", "local",
        "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0", "--results_path", str(res), "--logdir", str(logs),
        "--yes",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=> phase 1 (validation) summary: 2 done, 0 skipped (results existed), 0 failed" in proc.stdout
    assert "=> phase 2 (test) summary: 2 done, 0 skipped (results existed), 0 failed" in proc.stdout
    docs = [json.loads(p.read_text()) for p in sorted((res / "class-il" / "seq-fmnist" / "er_ace").glob("*.json"))]
    val = {(d["args"]["kappa"], d["args"]["lambd"], d["args"]["ada_t0"]): d for d in docs if d["args"]["validation"]}
    test = {d["args"]["nl"]: d for d in docs if not d["args"]["validation"]}
    assert len(docs) == 4 and set(val) == {(0.4, 0.1, 0), (1.0, 0.1, 0)} and set(test) == {"BN", "AdaB2N"}
    assert all(d["name"].endswith("_val") and d["args"]["nl"] == "AdaB2N" for d in val.values())
    assert all((logs / f"{d['name']}.txt").exists() for d in docs)
    best = max(sorted(val), key=lambda c: val[c]["final"]["class_il_avg"])
    ada = test["AdaB2N"]["args"]
    assert (ada["kappa"], ada["lambd"], ada["ada_t0"]) == best
    files = write_report(res, plots=False)
    assert f"| AdaB2N | seq-fmnist er_ace 200 | {best[0]:g} | 0.1 | 0 | validation |" in files.text
    for name, doc in test.items():
        assert f"| {name} | {doc['final']['class_il_avg']:.2f} (1) |" in files.text  # the test run, not †

    assert main(argv, probe=no_gpu) == 0
    again = capsys.readouterr().out
    assert "=> phase 2 (test) summary: 0 done, 2 skipped (results existed), 0 failed" in again
    assert f"AdaB2N runs kappa {best[0]}, lambd 0.1, ada_t0 0" in again
    assert len(list(res.rglob("*.json"))) == 4


def test_tune_selection_counts_earlier_validation_runs_of_the_same_protocol_as_the_report_does(
    tmp_path: Path,
) -> None:
    """Validation runs left in the folder by an earlier search (another kappa) take part in the choice, exactly as
    in the report's; runs of another protocol (here two epochs) do not."""
    args = parse_launcher_args(tune_argv(tmp_path))
    phase1 = expand_validation(args)
    for run in phase1:
        write_results(run, {CONFIG_A: 50.0, CONFIG_B: 60.0}[run.config])
    earlier = expand_validation(parse_launcher_args(tune_argv(tmp_path, "--kappas", "0.1")))
    for run in earlier:
        write_results(run, 90.0 if run.buffer_size == 200 else 10.0)
    other_protocol = next(r for r in earlier if r.buffer_size == 500)
    doc = json.loads(other_protocol.results.read_text())
    doc["args"]["n_epochs"], doc["final"]["class_il_avg"] = 2, 99.0
    other_protocol.results.with_name("two_epochs_val.json").write_text(json.dumps(doc))

    chosen = select_from_validation(phase1).chosen
    assert chosen == {("seq-fmnist", "er_ace", 200): (0.1, 0.1, 0), ("seq-fmnist", "er_ace", 500): CONFIG_B}
    records, _ = load_records(tmp_path / "res")
    same_protocol = [
        r for r in records if r.protocol == next(x for x in records if x.path == phase1[0].results).protocol
    ]
    assert select_configs(same_protocol) == chosen
