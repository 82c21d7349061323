"""Bad input through every door is one line naming the problem and the fix (issue 37): an unknown flag names the
nearest ones, a bad value its flag, without the usage block (``--help`` keeps it); the API raises ``UserError``
without the chain argparse raised it in; the report on a folder without runs exits 2; ``--nl`` lists the norms; one
spelling of the wandb switch and one default project in both commands."""

from __future__ import annotations

import json
import traceback
from argparse import SUPPRESS
from pathlib import Path

import pytest
from test_cli import _offline, assert_one_line_error, run_cli  # noqa: F401  (autouse: no downloads)
from test_report import write_run

import normcl
from normcl.models.utils.norms import NORMS
from normcl.utils.core.commands import WANDB_PROJECT
from normcl.utils.experiments import cli, report
from normcl.utils.experiments.grid import expand_grid
from normcl.utils.main import main
from normcl.utils.parser import build_parser, help_of

RUN = ["--dataset", "seq-fmnist", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--nowand", "1"]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], entry=main) -> str:
    """What ``entry`` printed for ``argv``, which it refused with exit code 2 and nothing on stdout."""
    with pytest.raises(SystemExit) as stop:
        entry(argv)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage:" not in err
    return err


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--bufer_size", "50"], "error: unknown flag --bufer_size (did you mean --buffer_size?); "),
        (["--kapa", "0.4", "--zzz", "1"], "error: unknown flags --kapa (did you mean --kappa?), --zzz; "),
        (["--lr", "fast"], "error: argument --lr: invalid float value: 'fast'"),
        (["--forward_mode", "jont"], "error: argument --forward_mode: invalid choice: 'jont' (choose from "),
    ],
    ids=["misspelt flag", "two unknown flags", "bad value", "bad choice"],
)
def test_a_bad_flag_is_one_line_without_the_usage_block(
    extra: list[str], line: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = refused([*RUN, "--results_path", str(tmp_path), *extra], capsys)
    assert_one_line_error(err, [line])
    assert err.startswith(line)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line_and_help_keeps_the_usage(tmp_path: Path) -> None:
    proc = run_cli(*RUN, "--bufer_size", "50", "--results_path", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "error: unknown flag --bufer_size (did you mean --buffer_size?); python utils/main.py --help lists the flags\n"
    )
    proc = run_cli("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python utils/main.py [-h] --dataset DATASET")


def test_the_launcher_and_the_report_refuse_in_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["--dry_run", "--num_sedes", "2"], capsys, cli.main)
    assert_one_line_error(err, ["unknown flag --num_sedes (did you mean --num_seeds?); normcl-grid --help"])
    err = refused(["results", "--noplots"], capsys, report.main)
    assert_one_line_error(err, ["unknown flag --noplots (did you mean --no_plots?); normcl-report --help"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"lr": "fast"}, "argument --lr: invalid float value: 'fast'"),
        ({"validation": 2, "lr": 0.1}, "argument --validation: invalid choice: '2' (choose from 0, 1)"),
        ({"bufer_size": 50}, "unknown argument 'bufer_size' (did you mean 'buffer_size'?); normcl.get_avail_args()"),
    ],
)
def test_the_api_raises_the_user_error_alone_without_the_chain(args: dict, message: str) -> None:
    with pytest.raises(normcl.UserError) as raised:
        normcl.load_runner("sgd", "seq-fmnist", args)
    assert str(raised.value).startswith(message)
    shown = "".join(traceback.format_exception(raised.value))
    assert "During handling" not in shown and "ArgumentError" not in shown and "ValueError:" not in shown
    assert shown.count("Error:") == 1, shown


def test_nl_lists_every_registered_norm() -> None:
    (nl,) = [a for a in build_parser()._actions if a.dest == "nl"]
    assert help_of(nl).endswith(f": {', '.join(NORMS.names())}")
    assert {"AdaB2N", "BN", "BRN", "CN", "GN", "IN", "LN", "TBBN"} <= set(NORMS.names())


def test_one_wandb_switch_and_one_default_project_in_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    run_flags = {s: a for a in build_parser()._actions for s in a.option_strings}
    grid_flags = {s: a for a in cli.build_parser()._actions for s in a.option_strings}
    assert run_flags["--nowand"].dest == grid_flags["--nowand"].dest == "nowand"
    assert "--nowandb" not in run_flags and grid_flags["--nowandb"].help == SUPPRESS  # the old spelling: hidden
    assert run_flags["--wandb_project"].default == grid_flags["--wandb_project"].default == WANDB_PROJECT
    grid = ["--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "--num_seeds", "1"]
    for switch in (["--nowand"], ["--nowand", "1"]):
        (run,) = [r for r in expand_grid(cli.parse_launcher_args([*grid, "--buffer_sizes", "200", *switch]))]
        flags = dict(zip(run.argv, [*run.argv[1:], None], strict=True))
        assert flags["--nowand"] == "1" and flags["--wandb_project"] == WANDB_PROJECT  # the project utils/main.py uses
    assert capsys.readouterr().err == ""
    old = cli.parse_launcher_args([*grid, "--buffer_sizes", "200", "--nowandb"])
    assert old.nowand == 1
    assert capsys.readouterr().err == "warning: --nowandb is deprecated; use --nowand\n"
    assert cli.parse_launcher_args([*grid, "--buffer_sizes", "200"]).nowand == 0


def test_the_report_of_a_folder_without_runs_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: no runs in {empty}; pass the --results_path of the runs\n"
    assert list(empty.iterdir()) == [], "no report written"
    (empty / "notes.json").write_text(json.dumps({"a": 1}))
    assert report.main([str(empty)]) == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err, [f"no runs in {empty} (1 file(s) skipped, the first: skipped {empty / 'notes.json'}"])
    write_run(tmp_path / "runs", "bn0", final=40.0)
    assert report.main([str(tmp_path / "runs"), "--no_plots"]) == 0
