"""The rounding-noise report (``python -m utils.report RERUNS --reruns_of BASE``) on results files whose numbers are
known: reruns matched by name, the identity check, and the spreads worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_report import write_run

from normcl.utils.experiments import rounding
from normcl.utils.experiments.report import main

AVX2 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "kernel_limits": {}, "threads": 1}
KERNELS = {**AVX2, "cpu_capability": "DEFAULT", "kernel_limits": {"DNNL_MAX_CPU_ISA": "SSE41"}}
THREADS = {**AVX2, "threads": 2}
# BN in er_ace 200, seeds 0-2: the base runs, and each rerun two ways; seed 3 has a base run only.
BASE, UNDER_KERNELS, UNDER_THREADS = (60.0, 64.0, 68.0), (61.0, 63.0, 68.0), (59.0, 65.0, 70.0)


def folders(tmp_path: Path, same: tuple[float, ...] = BASE[:2]) -> tuple[Path, Path]:
    base, reruns = tmp_path / "base", tmp_path / "reruns"
    for seed in range(3):
        name = f"bn_seed{seed}"
        write_run(base, name, final=BASE[seed], seed=seed, run_name=name, environment=AVX2)
        write_run(reruns / "kernels", name, final=UNDER_KERNELS[seed], seed=seed, run_name=name, environment=KERNELS)
        write_run(reruns / "threads", name, final=UNDER_THREADS[seed], seed=seed, run_name=name, environment=THREADS)
    for seed, final in enumerate(same):
        write_run(
            reruns / "same", f"bn_seed{seed}", final=final, seed=seed, run_name=f"bn_seed{seed}", environment=AVX2
        )
    write_run(base, "bn_seed3", final=72.0, seed=3, run_name="bn_seed3", environment=AVX2)
    # Another configuration of the column (the validation split): not a seed of the rerun cell.
    write_run(base, "bn_val_seed0", final=0.0, seed=0, validation=1, run_name="bn_val_seed0", environment=AVX2)
    write_run(reruns / "threads", "gn_seed0", final=1.0, run_name="gn_seed0", environment=THREADS)  # no base run
    return base, reruns


def test_the_spreads_and_the_seeds_a_gain_needs_by_hand(tmp_path: Path) -> None:
    base, reruns = folders(tmp_path)
    result = rounding.analyse(reruns, base)
    assert result.identity == {"kernels": False, "same": True, "threads": False}
    (spread,) = result.spreads  # no run has an anytime curve: the final class-IL alone
    # Per seed (base, kernels, threads): variances 1, 1 and 4/3; their mean 10/9. Every base seed of the cell, the
    # one without reruns too, and no run of another configuration: 60, 64, 68, 72, variance 80/3.
    assert (spread.cells, spread.seeds, spread.reruns, spread.base_seeds) == (1, 3, 6, 4)
    assert spread.rounding_sd == pytest.approx(math.sqrt(10 / 9)) and spread.seed_sd == pytest.approx(math.sqrt(80 / 3))
    assert spread.mean_abs == pytest.approx({"kernels": 2 / 3, "threads": 4 / 3})
    z = 1.959964 + 0.841621
    assert spread.seeds_for(1.0) == math.ceil(2 * (z * math.sqrt(10 / 9)) ** 2) == 18
    assert (spread.seeds_for(2.0), spread.seeds_for(5.0)) == (5, 2)
    assert result.unmatched == ["threads/gn_seed0"]


def test_a_rerun_that_diverged_on_one_side_only_is_named_and_left_out_of_the_spreads(tmp_path: Path) -> None:
    base, reruns = folders(tmp_path)
    # seed 4: the base run diverged (a partial file, no accuracies), its rerun under the other kernels did not.
    write_run(base, "bn_seed4.partial", final=10.0, seed=4, run_name="bn_seed4", environment=AVX2)
    write_run(reruns / "kernels", "bn_seed4", final=50.0, seed=4, run_name="bn_seed4", environment=KERNELS)
    result = rounding.analyse(reruns, base)
    assert result.diverged == ["kernels/bn_seed4"]
    (spread,) = result.spreads  # as without seed 4: no accuracy to compare the rerun with
    assert (spread.seeds, spread.reruns, spread.base_seeds) == (3, 6, 4)
    assert spread.rounding_sd == pytest.approx(math.sqrt(10 / 9))
    text = rounding.markdown(result, "Rounding")
    assert "Reruns that diverged where their base run did not, or the reverse: kernels/bn_seed4" in text


def test_the_report_states_the_identity_check_and_the_table(tmp_path: Path, capsys) -> None:
    base, reruns = folders(tmp_path, same=(60.0, 64.5))  # seed 1's same-settings rerun did not reproduce
    assert main([str(reruns), "--reruns_of", str(base), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert text == capsys.readouterr().out.split("=> wrote")[0].rstrip("\n") + "\n"
    assert "- `same`: 2 reruns, identity check (same machine settings); 1 of 2 bitwise identical" in text
    assert "- `kernels`: 3 reruns, perturbation." in text
    assert "| final class-IL | 1 | 3 | 6 | 1.05 | 4 | 5.16 | 0.20 | 0.67 | 1.33 | 18 | 5 | 2 |" in text
    # The largest move under each perturbation (kernels: +1, -1, 0, the first of a tie; threads: -1, +1, +2).
    assert "| final class-IL | kernels | BN in seq-fmnist er_ace 200, seed 0 | 60.00 | 61.00 | +1.00 |" in text
    assert "| final class-IL | threads | BN in seq-fmnist er_ace 200, seed 2 | 68.00 | 70.00 | +2.00 |" in text
    assert "Reruns without a base run of their name (left out): threads/gn_seed0" in text


def test_the_rounding_report_writes_its_part_of_a_results_page(tmp_path: Path) -> None:
    base, reruns = folders(tmp_path, same=(60.0, 64.0))
    page = tmp_path / "results.md"
    argv = [str(reruns), "--reruns_of", str(base), "--out", str(tmp_path / "out"), "--page", str(page)]
    assert main([*argv, "--part", "rounding", "--command", "bash rerun.sh"]) == 0
    text = page.read_text()
    assert "bash rerun.sh" in text and "- `kernels`: 3 reruns, perturbation." in text
    assert "<!-- end of the generated part (rounding) -->" in text


def test_page_flags_without_a_page_are_refused(tmp_path: Path, capsys) -> None:
    base, reruns = folders(tmp_path, same=(60.0, 64.0))
    with pytest.raises(SystemExit):
        main([str(reruns), "--reruns_of", str(base), "--command", "bash rerun.sh"])
    assert "--command and --part say how to write a results page: add --page PAGE" in capsys.readouterr().err


def test_a_missing_base_folder_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "reruns").mkdir()
    assert main([str(tmp_path / "reruns"), "--reruns_of", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a folder; pass the --results_path of the base runs")


def test_reruns_that_match_no_base_run_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "reruns" / "kernels").mkdir(parents=True)
    assert main([str(tmp_path / "reruns"), "--reruns_of", str(tmp_path / "base")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no run in a subfolder of {tmp_path / 'reruns'} reruns a run")
