"""The report on runs that diverged (non-finite loss: ``NAME.partial.json``): diverged records, the cells and the
sensitivity entries that count them, and the selection rule that never chooses them."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from test_report import rows, write_run

from normcl.utils.core.run_files import PARTIAL_SUFFIX
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.report import write_report
from normcl.utils.experiments.selection import select_configs

STOPPED = {"reason": "non-finite loss", "task": 1, "step": 42}
LEGEND = (
    "`(n + k diverged)`: the mean is over n runs; k more stopped on a non-finite training loss (their results are "
    "`NAME.partial.json`) and are left out. `diverged (k)`: all k runs did. An AdaB²N configuration with a diverged "
    "run is never chosen."
)
COLUMN = ("seq-fmnist", "er_ace", 200)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")


def write_partial(root: Path, name: str, stopped: dict[str, Any] | None = STOPPED, **kwargs: Any) -> Path:
    """A partial results file as ``utils/main.py`` writes it: the first task's accuracy (high: it must not count),
    ``final`` over that task only, and ``stopped`` (none in files written before that entry)."""
    done = write_run(root, name, final=99.0, run_name=name, **kwargs)
    doc = json.loads(done.read_text())
    doc["accuracy_matrix"]["class_il"][1:] = [[None] * 3] * 2
    if stopped is not None:
        doc["stopped"] = stopped
    partial = done.with_name(name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(doc))
    done.unlink()
    return partial


def test_cells_leave_diverged_runs_out_of_the_means_and_count_them(tmp_path: Path) -> None:
    for seed, final in enumerate((40.0, 42.0)):
        write_run(tmp_path, f"bn{seed}", final=final, seed=seed)
        write_run(tmp_path, f"cn{seed}", final=final + 5, seed=seed, nl="CN")
    write_partial(tmp_path, "bn2", seed=2)
    write_partial(tmp_path, "cn2", seed=2, nl="CN", stopped=None)  # written before partial files said where
    for seed in (0, 1):
        write_partial(tmp_path, f"gn{seed}", seed=seed, nl="GN", stopped={**STOPPED, "step": 7 + seed, "task": 0})
    records, warnings = load_records(tmp_path)
    assert not warnings and sum(r.diverged for r in records) == 4
    diverged = next(r for r in records if r.diverged and r.seed == 2 and r.method == "BN")
    assert (diverged.class_il, diverged.task_il, diverged.matrix, diverged.stopped) == (None, None, [], STOPPED)
    assert diverged.args["seed"] == 2 and diverged.config is None and diverged.key == COLUMN

    files = write_report(tmp_path, plots=False)
    text = files.text
    assert LEGEND in text
    spread = f"{statistics.stdev([40, 42]):.2f}"
    assert f"| BN | 41.00 ± {spread} (2 + 1 diverged) |" in text  # class-IL
    assert "| BN | 90.00 ± 0.00 (2 + 1 diverged) |" in text  # task-IL
    assert "| GN | diverged (2) |" in text
    assert "| CN − BN | +5.00 ± 0.00 (2; ahead on 2; 1 diverged) |" in text  # paired gain: diverged seeds unpaired
    assert "| GN | diverged" not in text.split("## Gain over BN")[1].split("\n## ")[0]
    assert text.split("## Runs that diverged (4)\n\n")[1].split("\n\n")[0].splitlines() == [
        "- `bn2`: non-finite loss at step 42, task 2",
        "- `cn2`: non-finite loss",
        "- `gn0`: non-finite loss at step 7, task 1",
        "- `gn1`: non-finite loss at step 8, task 1",
    ]
    table = {r["method"]: r for r in rows(files.csv)}
    assert (table["BN"]["n_seeds"], table["BN"]["seeds"], table["BN"]["n_diverged"]) == ("2", "0 1", "1")
    assert (table["GN"]["n_seeds"], table["GN"]["class_il_mean"], table["GN"]["class_il_std"]) == ("0", "diverged", "")
    assert (table["GN"]["forgetting_mean"], table["GN"]["n_diverged"]) == ("diverged", "2")
    tex = files.latex.read_text()
    assert f"$41.00_{{\\pm {spread}}}$\\textsuperscript{{+1 diverged}}" in tex
    assert "GN & diverged \\\\" in tex and "% +k diverged: k more runs" in tex


def test_a_configuration_with_a_diverged_run_is_never_chosen_and_the_sensitivity_says_diverged(
    tmp_path: Path,
) -> None:
    """(0.4, 10) scored 99 on the seed that finished but diverged on the other: never chosen; (1, 10) diverged on
    both seeds: ``diverged`` in the kappa × lambd table and in sensitivity.csv."""
    scores = {(0.4, 0.1): (60.0, 62.0), (1.0, 0.1): (50.0, 52.0), (0.4, 10.0): (99.0, None), (1.0, 10.0): (None,) * 2}
    for (kappa, lambd), finals in scores.items():
        for seed, final in enumerate(finals):
            config = {"nl": "AdaB2N", "seed": seed, "validation": 1, "kappa": kappa, "lambd": lambd}
            name = f"val-k{kappa}-l{lambd}-s{seed}"
            if final is None:
                write_partial(tmp_path, name, **config)
            else:
                write_run(tmp_path, name, final=final, **config)
    for seed in (0, 1):
        write_run(tmp_path, f"test{seed}", final=40.0 + 2 * seed, nl="AdaB2N", seed=seed, kappa=0.4, lambd=0.1)
    records, _ = load_records(tmp_path)
    assert select_configs(records) == {COLUMN: (0.4, 0.1, 0)}
    files = write_report(tmp_path, plots=False)
    assert "| AdaB2N | seq-fmnist er_ace 200 | 0.4 | 0.1 | 0 | validation |" in files.text
    assert f"| AdaB2N | 41.00 ± {statistics.stdev([40, 42]):.2f} (2) |" in files.text
    grid = files.text.split("### AdaB2N, seq-fmnist er_ace 200, ada_t0 = 0 (validation split)\n\n")[1]
    assert grid.split("\n\n")[0].splitlines() == [
        "| kappa \\ lambd | 0.1 | 10 |",
        "| --- | --- | --- |",
        "| 0.4 | 61.00 ± 1.41 (2) | 99.00 (1 + 1 diverged) |",
        "| 1 | 51.00 ± 1.41 (2) | diverged (2) |",
    ]
    sensitivity = {(r["kappa"], r["lambd"]): r for r in rows(files.sensitivity_csv)}
    fields = ("n_seeds", "class_il_mean", "class_il_std", "n_diverged", "split")
    assert [sensitivity[("1.0", "10.0")][f] for f in fields] == ["0", "diverged", "", "2", "validation"]
    assert [sensitivity[("0.4", "10.0")][f] for f in fields] == ["1", "99.0000", "", "1", "validation"]
    assert [sensitivity[("0.4", "0.1")][f] for f in fields] == ["2", "61.0000", "1.4142", "0", "validation"]


def test_a_column_whose_configurations_all_diverged_has_no_choice(tmp_path: Path) -> None:
    for kappa in (0.4, 1.0):
        write_partial(tmp_path, f"val-k{kappa}", nl="AdaB2N", validation=1, kappa=kappa, lambd=10.0)
    write_run(tmp_path, "bn0", final=40.0)
    records, _ = load_records(tmp_path)
    assert select_configs(records) == {}
    files = write_report(tmp_path, plots=False)
    assert "| AdaB2N | diverged (2) † |" in files.text
    assert "| AdaB2N | seq-fmnist er_ace 200 | – | – | – | none: every configuration diverged |" in files.text
    (row,) = [r for r in rows(files.csv) if r["method"] == "AdaB2N"]
    assert (row["kappa"], row["selected_on"], row["split"], row["n_diverged"]) == (
        "", "none: every configuration diverged", "validation", "2",
    )  # fmt: skip
    assert "| 0.4 | diverged (1) |" in files.text and "| 1 | diverged (1) |" in files.text


def test_a_partial_file_next_to_final_results_is_an_earlier_attempt_and_ignored(tmp_path: Path) -> None:
    """Deleting the partial file is how one reruns a diverged run; a run rerun without that still counts once."""
    write_partial(tmp_path, "bn0")
    write_run(tmp_path, "bn0", final=40.0)
    records, warnings = load_records(tmp_path)
    assert [r.diverged for r in records] == [False] and not warnings
    text = write_report(tmp_path, plots=False).text
    assert "| BN | 40.00 (1) |" in text and "diverged" not in text


def test_one_configuration_fixed_beforehand_keeps_its_cell_when_a_seed_diverges(tmp_path: Path) -> None:
    """A column that ran one AdaB²N configuration on the test protocol alone (the stream grid's, chosen on another
    grid's validation runs) chose nothing: a diverged seed is counted in its cell, not reported as "every
    configuration diverged"."""
    for seed in (0, 1):
        write_run(tmp_path, f"ada{seed}", final=40.0 + 2 * seed, nl="AdaB2N", seed=seed, kappa=0.1, lambd=10.0)
    write_partial(tmp_path, "ada2", nl="AdaB2N", seed=2, kappa=0.1, lambd=10.0)
    write_run(tmp_path, "bn0", final=40.0)
    files = write_report(tmp_path, plots=False)
    assert f"| AdaB2N | 41.00 ± {statistics.stdev([40, 42]):.2f} (2 + 1 diverged) |" in files.text
    assert "| AdaB2N | seq-fmnist er_ace 200 | 0.1 | 10 | 0 | only configuration run |" in files.text
    (row,) = [r for r in rows(files.csv) if r["method"] == "AdaB2N"]
    assert (row["kappa"], row["selected_on"], row["n_diverged"]) == ("0.1", "only configuration run", "1")


def test_one_configuration_fixed_beforehand_whose_every_seed_diverged_is_named_and_counted(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_partial(tmp_path, f"ada{seed}", nl="AdaB2N", seed=seed, kappa=0.1, lambd=10.0)
    write_run(tmp_path, "bn0", final=40.0)
    files = write_report(tmp_path, plots=False)
    assert "| AdaB2N | diverged (2) |" in files.text
    assert "| AdaB2N | seq-fmnist er_ace 200 | 0.1 | 10 | 0 | only configuration run |" in files.text
