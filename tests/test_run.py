"""``run.py`` (``utils/experiments``): the paper's grid, run names and command lines, and the CLI's errors."""

from __future__ import annotations

import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest
from run_helpers import (  # _offline: importing the autouse fixture applies it to this module
    FMNIST_BN,
    REPO,
    SMALL_GRID,
    _offline,  # noqa: F401
    fake_command,
    flag,
    invocations,
    no_gpu,
    small_runs,
)

from normcl.utils.core.errors import UserError
from normcl.utils.core.run_files import results_file
from normcl.utils.experiments.cli import main, parse_launcher_args, reserved_extra
from normcl.utils.experiments.grid import expand_grid, validate_runs
from normcl.utils.experiments.methods import METHOD_ORDER, PSEUDO_METHODS, Config, method_flags, method_of, norm_of
from normcl.utils.experiments.processes import default_command

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
        assert value["--wandb_project"] == "normcl"  # utils/main.py's default project
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


def test_each_flag_the_launcher_sets_is_refused_in_extra_and_names_a_launcher_flag_that_exists(tmp_path: Path) -> None:
    """``Roles.launcher`` is declared on the flag; where it names a ``run.py`` flag, that flag exists, and every
    reserved flag is refused in ``--extra`` with that advice."""
    from normcl.utils.experiments.cli import build_parser

    launcher_flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    reserved = reserved_extra()
    assert {
        "--dataset",
        "--seed",
        "--kappa",
        "--lambd",
        "--ada_t0",
        "--member",
        "--forward_mode",
        "--no_affine",
    } <= set(reserved)
    for name, advice in reserved.items():
        if advice.startswith("--"):
            assert advice.split()[0] in launcher_flags, (name, advice)
        with pytest.raises(UserError, match=f"^--extra may not set {name}: the launcher sets it per run; use "):
            parse_launcher_args([*SMALL_GRID, "--extra", f"{name} 1"])


def test_the_launchers_methods_come_back_as_the_reports_rows(tmp_path: Path) -> None:
    """One vocabulary: each of the report's rows is a method ``run.py`` can run, and its runs' flags, as
    ``utils/main.py`` resolves and records them, come back through the report's ``method_of`` as that row, with
    the same AdaB²N configuration."""
    from normcl.utils.args import parse_args

    runs = small_runs(tmp_path, "--methods", *METHOD_ORDER, "--num_seeds", "1")
    assert [r.method for r in runs] == list(METHOD_ORDER)
    for run in runs:
        recorded = vars(parse_args(list(run.argv)))
        assert method_of(recorded) == run.method
        assert recorded["nl"] == norm_of(run.method) and Config.of(recorded) == run.config
    assert set(PSEUDO_METHODS) == {"BN-joint", "AdaB2N-renorm"}
    for method, args in PSEUDO_METHODS.items():
        assert method_of(args) == method and method_flags(method)[:2] == ["--nl", args["nl"]]
        assert all(reserved_extra()[f"--{key}"] == f"--methods {method}" for key in args if key != "nl")
    assert Config(0.4, 1e-05, 1).flags() == ["--kappa", "0.4", "--lambd", "1e-05", "--ada_t0", "1"]
    assert Config(1, 0.1, 0).text() == "kappa 1.0, lambd 0.1, ada_t0 0" and Config(1, 0.1, 0) == (1.0, 0.1, 0)


def test_extra_goes_last_and_cpu_flags_first(tmp_path: Path) -> None:
    run = small_runs(tmp_path, "--extra", "--samples_per_class 30 --num_threads 1")[0]
    cmd = default_command(run, 4)
    assert cmd[:2] == [sys.executable, str(REPO / "utils" / "main.py")]
    assert cmd[2:6] == ["--device", "cpu", "--num_threads", "4"]
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
        (["--extra=--no_such_flag"], "would fail: unknown flag --no_such_flag; normcl-run --help lists the flags"),
        (["--datasets", "seq-fmnist", "--buffer_sizes", "50"], "no best args for 'derpp' on 'seq-fmnist'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


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
    from normcl.utils.args import parse_args

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
