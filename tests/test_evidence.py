"""The report's selection table: the configuration best on test against the validation choice, on results files
whose numbers are known (the gains over BN: ``test_gains.py``)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from test_report import write_run

from normcl.utils.core.errors import UserError
from normcl.utils.experiments.evidence import selections
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.report import write_report
from normcl.utils.experiments.tables import build_report

A = {"kappa": 0.1, "lambd": 1.0, "ada_t0": 1}
B = {"kappa": 0.4, "lambd": 0.1, "ada_t0": 1}


def column(root: Path, model: str, bn: list[float], a: list[float], b: list[float], val: tuple[float, float]) -> None:
    """BN and two AdaB²N configurations on seeds 0..2 as test runs, and both configurations on validation."""
    for seed, (x, y, z) in enumerate(zip(bn, a, b, strict=True)):
        write_run(root, f"{model}-bn{seed}", final=x, seed=seed, model=model)
        write_run(root, f"{model}-a{seed}", final=y, seed=seed, model=model, nl="AdaB2N", **A)
        write_run(root, f"{model}-b{seed}", final=z, seed=seed, model=model, nl="AdaB2N", **B)
    write_run(root, f"{model}-a-val", final=val[0], model=model, nl="AdaB2N", validation=1, **A)
    write_run(root, f"{model}-b-val", final=val[1], model=model, nl="AdaB2N", validation=1, **B)


def test_best_on_test_and_the_validation_choice_are_reported_apart(tmp_path: Path) -> None:
    # Validation prefers A (60 > 50); the test runs prefer B (mean 48 > 43).
    column(tmp_path, "er_ace", bn=[40, 44, 45], a=[41, 44, 44], b=[46, 48, 50], val=(60, 50))
    report = build_report(load_records(tmp_path)[0])
    (s,) = selections(report)
    assert (s.method, s.configurations) == ("AdaB2N", 2)
    assert s.best_on_test == (0.4, 0.1, 1) and s.chosen == (0.1, 1.0, 1)
    assert s.best_gain is not None and s.chosen_gain is not None
    assert s.best_gain.diff.mean == statistics.mean([6, 4, 5]) and s.best_gain.ahead == 3
    assert s.chosen_gain.diff.mean == statistics.mean([1, 0, -1]) and s.chosen_gain.ahead == 1
    text = write_report(tmp_path, plots=False).text
    row = "| AdaB2N − BN | seq-fmnist er_ace 200 | 2 | κ 0.4, λ 0.1, t0 1 | +5.00 ± 1.00 (3; ahead on 3) |"
    assert row in text
    assert "| κ 0.1, λ 1, t0 1 | +0.00 ± 1.00 (3; ahead on 1) |" in text
    assert "(test split)" in text and "(validation split)" in text  # both sensitivity tables


def test_a_partly_run_grid_is_compared_on_the_seeds_every_configuration_has(tmp_path: Path) -> None:
    # A has seeds 0-2, B only seed 0 so far. On seed 0 alone A is ahead (50 > 45), though B's one run beats A's mean.
    write_run(tmp_path, "b-late", final=45.0, seed=0, model="er_ace", nl="AdaB2N", **B)
    for seed, (bn, a) in enumerate([(40.0, 50.0), (40.0, 30.0), (40.0, 30.0)]):
        write_run(tmp_path, f"bn{seed}", final=bn, seed=seed, model="er_ace")
        write_run(tmp_path, f"a{seed}", final=a, seed=seed, model="er_ace", nl="AdaB2N", **A)
    write_run(tmp_path, "a-val", final=60.0, model="er_ace", nl="AdaB2N", validation=1, **A)
    write_run(tmp_path, "b-val", final=50.0, model="er_ace", nl="AdaB2N", validation=1, **B)
    (s,) = selections(build_report(load_records(tmp_path)[0]))
    assert s.best_on_test == (0.1, 1.0, 1) == s.chosen
    assert s.best_gain is not None and s.best_gain.diff.mean == 10.0 and s.best_gain.diff.n == 1


@pytest.mark.parametrize("final", [90.0, 20.0])  # B then best on test, or not: either way its mean counts seed 1 twice
def test_a_configuration_that_ran_a_seed_twice_is_refused_not_counted_twice(tmp_path: Path, final: float) -> None:
    """A rerun of B's seed 1 beside its run: B's mean would count the seed twice and its pairing keep whichever run
    came last, so it is refused."""
    column(tmp_path, "er_ace", bn=[40, 44, 45], a=[41, 44, 44], b=[46, 48, 50], val=(60, 50))
    write_run(tmp_path, "er_ace-b1-again", final=final, seed=1, model="er_ace", nl="AdaB2N", **B)
    with pytest.raises(UserError, match=r"repeats seed 1 of .*: AdaB2N − BN in seq-fmnist er_ace 200 pairs runs by"):
        selections(build_report(load_records(tmp_path)[0]))


def test_no_evidence_tables_without_their_runs(tmp_path: Path) -> None:
    write_run(tmp_path, "bn0", final=40.0)
    write_run(tmp_path, "ada0", final=41.0, nl="AdaB2N", **A)
    report = build_report(load_records(tmp_path)[0])
    assert selections(report) == []  # no validation runs: nothing chosen apart from test
