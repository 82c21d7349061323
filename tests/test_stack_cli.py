"""Stacked runs from the command line (issue 14): results per member, a diverging member, float32, bad input.

``utils/main.py ... --member FLAGS --member FLAGS`` writes each member's results file under its own name; a member
whose loss turns NaN stops with its partial results while the others finish as they would alone; a bad member
specification is one line, exit 2, and nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from faults import inject_nan
from norm_helpers import doubled_bn

from normcl.models.utils.norms import NORMS, NormSpec
from normcl.utils.args import parse_args
from normcl.utils.main import main, run
from normcl.utils.member_args import parse_members

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO = Path(__file__).resolve().parent.parent
SHARED = [
    "--dataset", "seq-fmnist", "--model", "er_ace", "--buffer_size", "50", "--nl", "BN", "--lr", "0.03", "--bs", "10",
    "--epochs", "1", "--nf", "8", "--samples_per_class", "20", "--validation", "1", "--device", "cpu",
    "--num_threads", "1", "--nowand", "1", "--non_verbose", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_command_line_writes_each_members_results(tmp_path: Path) -> None:
    argv = [
        *SHARED,
        "--results_path",
        str(tmp_path),
        "--member",
        "--seed 0 --run_name a",
        "--member=--seed 1 --run_name b",
    ]
    env = {**os.environ, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "utils/main.py", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "class-il" / "seq-fmnist" / "er_ace"
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "b.json"]
    docs = [json.loads((folder / name).read_text()) for name in ("a.json", "b.json")]
    assert [(d["name"], d["args"]["seed"]) for d in docs] == [("a", 0), ("b", 1)]
    assert "[a] results written to" in proc.stdout and "[b] results written to" in proc.stdout


@pytest.mark.kernels
def test_a_diverging_member_stops_alone_and_the_others_finish_as_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member 1's stream batch of step 6 (task 2) is NaN (injected: a real divergence depends on the CPU)."""
    members = ["--seed 0 --run_name ok0", "--seed 1 --run_name nan", "--seed 2 --run_name ok2"]
    shared = [*SHARED, "--dtype", "float64", "--results_path", str(tmp_path / "stack")]
    with monkeypatch.context() as patch:
        inject_nan(patch, step=6, member=1)
        docs = run(parse_members(shared, members))
    folder = tmp_path / "stack" / "class-il" / "seq-fmnist" / "er_ace"
    assert sorted(p.name for p in folder.iterdir()) == ["nan.partial.json", "ok0.json", "ok2.json"]
    partial = json.loads((folder / "nan.partial.json").read_text())
    assert partial["stopped"] == {"reason": "non-finite loss", "task": 1, "step": 6}
    with monkeypatch.context() as patch:
        inject_nan(patch, step=6)
        (alone_stopped,) = run([parse_args([*shared[:-1], str(tmp_path / "alone"), *members[1].split()])])
    assert partial["stopped"] == alone_stopped["stopped"]
    alone_file = tmp_path / "alone" / folder.relative_to(tmp_path / "stack") / "nan.partial.json"
    alone_partial = json.loads(alone_file.read_text())
    assert partial["accuracy_matrix"] == alone_partial["accuracy_matrix"], "the first task, completed, as alone"
    for k in (0, 2):
        (alone,) = run([parse_args([*shared[:-1], str(tmp_path / "alone"), *members[k].split()])])
        assert docs[k]["accuracy_matrix"] == alone["accuracy_matrix"]


def test_a_float32_stack_is_its_members_up_to_the_rounding_of_grouped_convolutions(tmp_path: Path) -> None:
    """In float32 the grouped convolutions' input gradients are rounded otherwise than one network's, and online
    training amplifies any rounding (two runs alone that differ only in memory layout end tens of points apart), so
    a member is its run alone exactly until the first backward pass: same data, initialisation and forward."""
    members = ["--seed 0 --run_name f0", "--seed 3 --lr 0.01 --run_name f1"]
    shared = [*SHARED, "--results_path", str(tmp_path), "--disable_log", "1"]
    docs = run(parse_members(shared, members))
    for k, member in enumerate(members):
        (alone,) = run([parse_args([*shared, *member.split()])])
        assert docs[k]["random_accuracy"] == alone["random_accuracy"], "same initialisation and forward"
        matrix = docs[k]["accuracy_matrix"]["class_il"]
        assert all(0.0 <= v <= 100.0 for row in matrix for v in row if v is not None)


BAD_MEMBERS = {
    "other dataset": (["--seed 0", "--seed 1 --dataset seq-cifar10"], "stacked members differ in --dataset"),
    "other norm": (["--seed 0", "--seed 1 --nl GN"], "stacked members differ in --nl ('BN' and 'GN')"),
    "an option of another norm": (["--seed 0", "--seed 1 --kappa 0.4"], "stacked members differ in --kappa"),
    "an option the stacked layer shares": (
        ["--seed 0 --nl AdaB2N", "--seed 1 --nl AdaB2N --adab2n_renorm 1"],
        "stacked members differ in --adab2n_renorm",
    ),
    "BRN's clipping, which its stacking shares": (
        ["--seed 0 --nl BRN --brn_rmax 2", "--seed 1 --nl BRN --brn_rmax 3"],
        "stacked members differ in --brn_rmax (2.0 and 3.0)",
    ),
    "no seed": (["--seed 0", "--run_name x"], "every stacked member needs a --seed"),
    "same name": (["--seed 0 --run_name x", "--seed 1 --run_name x"], "stacked members share a --run_name"),
    "same default name": (["--seed 0 --lr 0.1", "--seed 0 --lr 0.05"], "stacked members share a --run_name"),
    "bad value": (["--seed 0", "--seed 1 --lr -1"], "--lr must be positive, got -1.0"),
    "resume without names": (
        ["--seed 0 --resume 1 --run_name r", "--seed 1 --resume 1"],
        "--resume needs the --run_name of the run to continue",
    ),
    "unbalanced quotes": (["--seed 0", "--seed '1"], "--member flags cannot be split"),
}


@pytest.mark.parametrize("case", list(BAD_MEMBERS))
def test_bad_members_are_one_line_exit_2_and_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members, message = BAD_MEMBERS[case]
    argv = [*SHARED, "--results_path", str(tmp_path / "res")]
    for member in members:
        argv += ["--member", member]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "res").exists()


def test_a_norm_whose_layer_declares_no_stacking_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    NORMS.names()
    monkeypatch.setitem(NORMS._items, "Doubled", NormSpec("Doubled", doubled_bn))
    argv = [*SHARED, "--nl", "Doubled", "--results_path", str(tmp_path), "--member", "--seed 0", "--member", "--seed 1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: norm 'Doubled' cannot be stacked: DoubledBN is not declared @stackable "
        "(models/utils/layer_stacking.py); run its runs alone (without --member or run.py --stack)\n"
    )
    assert not any(tmp_path.iterdir())
