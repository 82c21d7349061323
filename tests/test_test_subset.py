"""``--test_samples_per_class N`` for quick runs (issue 37): the run tests on the first N test images of each class
(after ``--validation``'s split), trains on the same data as without it, records it with its arguments, and its
runs are never averaged with runs on the whole test sets; results files written before the flag (the published
runs) read as runs on the whole test sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import _offline, assert_one_line_error  # noqa: F401  (autouse: no downloads)
from test_provenance import QUICK, results_of, write_fmnist
from test_report import write_run

import normcl
from normcl.utils.experiments.report import write_report
from normcl.utils.main import main


@pytest.mark.parametrize("validation", [False, True])
def test_the_run_tests_on_the_first_n_images_of_each_class(tmp_path: Path, validation: bool) -> None:
    write_fmnist(tmp_path / "fashion-mnist", per_class=20)
    base = {"buffer_size": 20, "lr": 0.03, "nf": 4, "seed": 0, "nowand": True, "data_path": tmp_path}
    _, whole = normcl.load_runner("er_ace", "seq-fmnist", {**base, "validation": validation})
    _, subset = normcl.load_runner(
        "er_ace", "seq-fmnist", {**base, "validation": validation, "test_samples_per_class": 1}
    )
    for t in range(5):
        a, b = whole.task(t), subset.task(t)
        assert a.train_x.equal(b.train_x) and a.train_y.equal(b.train_y)
        assert sorted(b.test_y.tolist()) == [2 * t, 2 * t + 1]  # one image of each of the task's two classes
        for label in (2 * t, 2 * t + 1):  # the first of its class in the whole test split
            first = int(np.flatnonzero(a.test_y.numpy() == label)[0])
            assert b.test_x[b.test_y == label].equal(a.test_x[first : first + 1])


def test_it_is_recorded_and_refused_when_not_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fmnist(tmp_path / "data" / "fashion-mnist")
    argv = ["--dataset", "seq-fmnist", *QUICK, "--data_path", str(tmp_path / "data"), "--results_path", str(tmp_path)]
    assert main([*argv, "--test_samples_per_class", "2"]) == 0
    assert results_of(tmp_path)["args"]["test_samples_per_class"] == 2
    assert main([*argv, "--test_samples_per_class", "0"]) == 2
    assert_one_line_error(capsys.readouterr().err, ["--test_samples_per_class must be positive, got 0"])


def test_the_report_keeps_runs_on_a_test_subset_apart_and_says_so(tmp_path: Path) -> None:
    old = write_run(tmp_path, "published", final=40.0, seed=0)  # written before the flag: no such argument
    document = json.loads(old.read_text())
    assert "test_samples_per_class" not in document["args"]
    write_run(tmp_path, "whole", final=42.0, seed=1, test_samples_per_class=None)
    write_run(tmp_path, "quick", final=60.0, seed=2, test_samples_per_class=5)
    text = write_report(tmp_path, tmp_path / "out", plots=False).text  # the old run and the new one: one cell
    column = "seq-fmnist er_ace 200 [test_samples_per_class={}]"
    columns = f"| method | {column.format(5)} | {column.format(None)} |"
    assert (
        f"## Class-IL accuracy (%)\n\n{columns}\n| --- | --- | --- |\n| BN | 60.00 (1) | 41.00 ± 1.41 (2) |\n" in text
    )
    assert "**Tested on a subset (the runs with `--test_samples_per_class`):** 5 test images per class" in text
