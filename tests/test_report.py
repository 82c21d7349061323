"""The report (``python -m utils.report``) on constructed results files: grouping, AdaB²N selection, tables, CSV,
LaTeX and plots."""

from __future__ import annotations

import csv
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import pytest
from matplotlib.colors import to_hex
from matplotlib.image import imread

from normcl.utils.experiments import plots, report
from normcl.utils.experiments.methods import (
    METHOD_COLOURS,
    METHOD_ORDER,
    OTHER_COLOURS,
    PSEUDO_METHODS,
    Config,
    method_colour,
    method_of,
)
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.report import write_report
from normcl.utils.experiments.selection import select_configs
from normcl.utils.experiments.tables import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")


def write_run(
    root: Path,
    name: str,
    *,
    final: float,
    nl: str = "BN",
    seed: int = 0,
    dataset: str = "seq-fmnist",
    model: str = "er_ace",
    buffer: int = 200,
    validation: int = 0,
    task_il: float = 90.0,
    forgetting: float = 10.0,
    diagnostics: bool = False,
    mode: str | None = None,
    environment: dict[str, Any] | None = None,
    **args: Any,
) -> Path:
    """A results file in ``utils/results.py``'s format, with a 3-task accuracy matrix whose last row averages to
    ``final``; ``mode``: the forward mode it records (none, as files before it was recorded, by default),
    ``environment``: its machine and code version."""
    full = {
        "dataset": dataset,
        "model": model,
        "buffer_size": buffer,
        "nl": nl,
        "seed": seed,
        "validation": validation,
        "forward_mode": None,
        "adab2n_renorm": 0,
        "no_affine": 0,
        "kappa": 1.0,
        "lambd": 0.0,
        "ada_t0": 0,
        "n_epochs": 1,
        "batch_size": 10,
        "lr": 0.03,
        **args,
    }
    matrix = [[80.0, None, None], [60.0, 70.0, None], [final - 10, final, final + 10]]
    drift = None
    if diagnostics:
        drift = [
            {"layers": {}, "summary": {"mean_to_balanced": 0.1 * t, "var_to_balanced": 0.2 * t,
                                       "mean_to_latest": 0.05, "var_to_latest": 0.1}}
            for t in range(1, 4)
        ]  # fmt: skip
    doc = {
        "format_version": 1,
        "name": name,
        "args": full,
        "setting": "class-il",
        **({"forward_mode": mode} if mode else {}),
        **({"environment": environment} if environment else {}),
        "accuracy_matrix": {"class_il": matrix, "task_il": matrix},
        "final": {"class_il_avg": final, "task_il_avg": task_il, "forgetting": forgetting},
        "norm_diagnostics": drift,
    }
    path = root / "class-il" / dataset / model / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_method_comes_from_the_run_arguments() -> None:
    assert method_of({"nl": "BN"}) == "BN"
    assert method_of({"nl": "BN", "forward_mode": "joint"}) == "BN-joint"
    assert method_of({"nl": "AdaB2N", "adab2n_renorm": 1}) == "AdaB2N-renorm"
    assert method_of({"nl": "AdaB2N", "adab2n_renorm": 0, "forward_mode": None}) == "AdaB2N"
    assert method_of({"nl": "CN", "no_affine": 1}) == "CN"
    assert method_of({"nl": "GN", "no_affine": 1}) == "GN-noaffine"


def test_cells_are_mean_and_std_over_seeds_in_the_papers_layout(tmp_path: Path) -> None:
    for seed, (acc, til, fgt) in enumerate([(40.0, 80.0, 20.0), (44.0, 84.0, 26.0), (45.0, 83.0, 23.0)]):
        write_run(tmp_path, f"bn{seed}", final=acc, seed=seed, task_il=til, forgetting=fgt)
    write_run(tmp_path, "gn0", final=30.0, nl="GN")
    write_run(tmp_path, "bn-c10", final=50.0, dataset="seq-cifar10", buffer=500)
    files = write_report(tmp_path, plots=False)
    text = files.text
    header = "| method | seq-cifar10 er_ace 500 | seq-fmnist er_ace 200 |"
    assert text.count(header) == 3  # three metrics
    assert text.count(header.replace("| method |", "| comparison |")) == 1  # and the gain over BN
    class_il = f"{statistics.mean([40, 44, 45]):.2f} ± {statistics.stdev([40, 44, 45]):.2f} (3)"
    task_il = f"{statistics.mean([80, 84, 83]):.2f} ± {statistics.stdev([80, 84, 83]):.2f} (3)"
    forgetting = f"{statistics.mean([20, 26, 23]):.2f} ± {statistics.stdev([20, 26, 23]):.2f} (3)"
    assert f"| BN | 50.00 (1) | {class_il} |" in text
    assert f"| BN | 90.00 (1) | {task_il} |" in text
    assert f"| BN | 10.00 (1) | {forgetting} |" in text
    assert "| GN |  | 30.00 (1) |" in text
    assert "| GN − BN |  | -10.00 (1; ahead on 0) |" in text  # seed 0: 30 - 40
    assert text.index("| BN |") < text.index("| GN |")
    assert files.markdown.read_text() == text
    table = rows(files.csv)
    assert [(r["method"], r["dataset"], r["n_seeds"]) for r in table] == [
        ("BN", "seq-cifar10", "1"), ("BN", "seq-fmnist", "3"), ("GN", "seq-fmnist", "1"),
    ]  # fmt: skip
    assert float(table[1]["class_il_mean"]) == pytest.approx(43.0)
    assert float(table[1]["class_il_std"]) == pytest.approx(statistics.stdev([40, 44, 45]), abs=1e-4)
    assert table[1]["seeds"] == "0 1 2" and table[1]["split"] == "test"
    tex = files.latex.read_text()
    assert tex.count("\\begin{tabular}{lcc}") == 3 and "seq-fmnist er\\_ace 200" in tex
    assert f"$43.00_{{\\pm {statistics.stdev([40, 44, 45]):.2f}}}$" in tex


def test_adab2n_configuration_is_chosen_on_validation_and_reported_on_test(tmp_path: Path) -> None:
    good, bad = {"kappa": 0.4, "lambd": 0.1, "ada_t0": 1}, {"kappa": 1.0, "lambd": 10.0, "ada_t0": 0}
    for seed in (0, 1):
        write_run(tmp_path, f"good-val{seed}", final=60.0 + seed, nl="AdaB2N", seed=seed, validation=1, **good)
        write_run(tmp_path, f"bad-val{seed}", final=50.0 + seed, nl="AdaB2N", seed=seed, validation=1, **bad)
        write_run(tmp_path, f"good-test{seed}", final=40.0 + 2 * seed, nl="AdaB2N", seed=seed, **good)
        write_run(tmp_path, f"bad-test{seed}", final=70.0, nl="AdaB2N", seed=seed, **bad)
    files = write_report(tmp_path, plots=False)
    assert f"| AdaB2N | 41.00 ± {statistics.stdev([40, 42]):.2f} (2) |" in files.text
    assert "| AdaB2N | seq-fmnist er_ace 200 | 0.4 | 0.1 | 1 | validation |" in files.text
    assert "optimistic" not in files.text
    (row,) = rows(files.csv)
    assert (row["kappa"], row["lambd"], row["ada_t0"], row["selected_on"], row["split"]) == (
        "0.4", "0.1", "1", "validation", "test",
    )  # fmt: skip
    sensitivity = rows(files.sensitivity_csv)
    assert {(r["kappa"], r["lambd"], r["ada_t0"], r["split"]) for r in sensitivity} == {
        ("0.4", "0.1", "1", "validation"), ("1.0", "10.0", "0", "validation"),
    }  # fmt: skip
    assert "### AdaB2N, seq-fmnist er_ace 200, ada_t0 = 1 (validation split)" in files.text


def test_without_validation_runs_the_selection_uses_final_accuracy_and_says_so(tmp_path: Path) -> None:
    for kappa in (0.1, 0.4, 0.7, 1.0):
        for lambd in (0.01, 0.1):
            final = 30.0 + 10 * kappa + lambd
            for seed in (0, 1):
                write_run(tmp_path, f"k{kappa}-l{lambd}-s{seed}", final=final + seed, nl="AdaB2N", seed=seed,
                          kappa=kappa, lambd=lambd, ada_t0=0)  # fmt: skip
    files = write_report(tmp_path, plots=False)
    assert "| AdaB2N | seq-fmnist er_ace 200 | 1 | 0.1 | 0 | final test accuracy (no validation runs) |" in files.text
    assert "optimistic" in files.text
    grid = files.text[files.text.index("| kappa \\ lambd |") :]
    assert grid.startswith("| kappa \\ lambd | 0.01 | 0.1 |")
    assert "| 0.7 | 37.51 ± 0.71 (2) | 37.60 ± 0.71 (2) |" in grid
    assert len(rows(files.sensitivity_csv)) == 8


def test_a_single_configuration_without_validation_runs_was_not_chosen_on_the_test_accuracy(tmp_path: Path) -> None:
    a, b = {"kappa": 0.4, "lambd": 0.1, "ada_t0": 0}, {"kappa": 1.0, "lambd": 0.1, "ada_t0": 0}
    for buffer in (200, 500):
        write_run(tmp_path, f"val-a{buffer}", final=60.0, nl="AdaB2N", buffer=buffer, validation=1, **a)
        write_run(tmp_path, f"val-b{buffer}", final=50.0, nl="AdaB2N", buffer=buffer, validation=1, **b)
        write_run(tmp_path, f"test-a{buffer}", final=40.0, nl="AdaB2N", buffer=buffer, **a)
    write_run(tmp_path, "renorm200", final=41.0, nl="AdaB2N", adab2n_renorm=1, **a)
    write_run(tmp_path, "renorm500", final=42.0, nl="AdaB2N", adab2n_renorm=1, buffer=500, **b)
    write_run(tmp_path, "c10", final=43.0, nl="AdaB2N", dataset="seq-cifar10", buffer=500, **b)
    files = write_report(tmp_path, plots=False)
    assert "| AdaB2N-renorm | seq-fmnist er_ace 200 | 0.4 | 0.1 | 0 | AdaB2N's validation choice |" in files.text
    assert "| AdaB2N-renorm | seq-fmnist er_ace 500 | 1 | 0.1 | 0 | only configuration run |" in files.text
    assert "| AdaB2N | seq-cifar10 er_ace 500 | 1 | 0.1 | 0 | only configuration run |" in files.text
    assert "optimistic" not in files.text and "no validation runs" not in files.text
    table = [r for r in rows(files.csv) if r["dataset"] == "seq-fmnist"]
    selected = {(r["method"], r["buffer_size"]): r["selected_on"] for r in table}
    assert selected == {
        ("AdaB2N", "200"): "validation", ("AdaB2N", "500"): "validation",
        ("AdaB2N-renorm", "200"): "AdaB2N's validation choice", ("AdaB2N-renorm", "500"): "only configuration run",
    }  # fmt: skip


def test_select_configs_is_the_tables_choice_and_breaks_ties_by_the_smallest_configuration(tmp_path: Path) -> None:
    for kappa in (1.0, 0.4, 0.7):
        for seed in (0, 1):
            final = 50.0 + seed if kappa != 0.7 else 40.0
            write_run(tmp_path, f"v{kappa}-{seed}", final=final, nl="AdaB2N", seed=seed, validation=1, kappa=kappa)
            write_run(tmp_path, f"c10-v{kappa}-{seed}", final=60.0 + kappa, nl="AdaB2N", seed=seed, validation=1,
                      kappa=kappa, dataset="seq-cifar10", buffer=500)  # fmt: skip
    write_run(tmp_path, "renorm", final=70.0, nl="AdaB2N", adab2n_renorm=1, validation=1, kappa=0.7)
    write_run(tmp_path, "test", final=90.0, nl="AdaB2N", kappa=0.7)
    records, _ = load_records(tmp_path)
    chosen = select_configs(records)
    assert chosen == {("seq-fmnist", "er_ace", 200): (0.4, 0.0, 0), ("seq-cifar10", "er_ace", 500): (1.0, 0.0, 0)}
    built = build_report(records)
    for (method, column), entry in built.entries.items():
        if method == "AdaB2N":
            assert entry.config == chosen[(column.dataset, column.model, column.buffer_size)]


def test_runs_of_different_protocols_are_not_averaged(tmp_path: Path) -> None:
    write_run(tmp_path, "online", final=40.0, n_epochs=1)
    write_run(tmp_path, "offline", final=60.0, n_epochs=5, seed=1)
    files = write_report(tmp_path, plots=False)
    assert "seq-fmnist er_ace 200 [n_epochs=1]" in files.text and "seq-fmnist er_ace 200 [n_epochs=5]" in files.text
    assert [r["variant"] for r in rows(files.csv)] == ["n_epochs=1", "n_epochs=5"]


@pytest.mark.parametrize("kind", ["norm", "model"])
def test_runs_that_differ_in_any_registered_option_are_not_averaged(tmp_path: Path, kind: str) -> None:
    """Every norm's and model's own option is part of a cell's identity (except AdaB²N's configuration, which the
    selection compares, and the options a method's name holds): for each, enumerated from the registries, two runs
    that differ only in it land in two cells. Files without the option ran with its inactive value."""
    from normcl.utils.component_options import component_options

    held = {*Config._fields, *(key for args in PSEUDO_METHODS.values() for key in args)}
    options = [o for k, _, o in component_options() if k == kind and o.dest not in held]
    assert options, f"no {kind} option to check"
    for option in options:
        folder = tmp_path / option.dest
        inactive = option.value_when_inactive
        other = f"{inactive}-other" if option.type is str else inactive + 1 if option.type is not bool else 1 - inactive
        write_run(folder, "a", final=40.0)
        write_run(folder, "b", final=60.0, seed=1, **{option.dest: other})
        text = write_report(folder, plots=False).text
        assert f"[{option.dest}={option.value_when_inactive}]" in text and f"[{option.dest}={other}]" in text, option


def test_a_training_subset_is_stated_under_the_tables(tmp_path: Path) -> None:
    write_run(tmp_path, "full", final=40.0)
    assert "Trained on a subset" not in write_report(tmp_path, plots=False).text
    write_run(tmp_path, "subset", final=40.0, seed=1, samples_per_class=1000)
    text = write_report(tmp_path, plots=False).text
    assert "**Trained on a subset (the runs with `--samples_per_class`):** 1000 training images per class" in text
    (tmp_path / "class-il" / "seq-fmnist" / "er_ace" / "full.json").unlink()
    assert "**Trained on a subset:** 1000 training images per class" in write_report(tmp_path, plots=False).text


def test_validation_only_results_are_marked(tmp_path: Path) -> None:
    write_run(tmp_path, "v0", final=40.0, validation=1)
    write_run(tmp_path, "v1", final=42.0, validation=1, seed=1)
    files = write_report(tmp_path, plots=False)
    assert f"| BN | 41.00 ± {statistics.stdev([40, 42]):.2f} (2) † |" in files.text
    assert "validation split" in files.text and rows(files.csv)[0]["split"] == "validation"


def test_gain_over_bn_is_paired_by_seed(tmp_path: Path) -> None:
    # BN 60, 62, 64 and AdaB2N 63, 66, 64 on seeds 0, 1, 2: differences 3, 4, 0 (mean 7/3, std sqrt(13/3)).
    for seed, (bn, ada) in enumerate([(60.0, 63.0), (62.0, 66.0), (64.0, 64.0)]):
        write_run(tmp_path, f"bn{seed}", final=bn, seed=seed)
        write_run(tmp_path, f"ada{seed}", final=ada, seed=seed, nl="AdaB2N", kappa=0.4, lambd=0.1)
    write_run(tmp_path, "gn2", final=61.0, seed=2, nl="GN")  # only seed 2 pairs: 61 - 64
    write_run(tmp_path, "cn7", final=70.0, seed=7, nl="CN")  # no BN run of seed 7: no gain
    write_run(tmp_path, "brn0", final=50.0, seed=0, nl="BRN", validation=1)  # validation: no gain
    text = write_report(tmp_path, plots=False).text
    assert "## Gain over BN per column, paired by seed: final class-IL (points)" in text
    assert "| AdaB2N − BN | +2.33 ± 2.08 (3; ahead on 2) |" in text
    assert "| GN − BN | -3.00 (1; ahead on 0) |" in text
    gain_table = text.split("## Gain over BN")[1].split("\n## ")[0]
    assert "| CN − BN |" not in gain_table and "| BRN − BN |" not in gain_table and "| BN − " not in gain_table


def test_running_statistics_after_the_last_task_are_tabulated(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path, f"bn{seed}", final=40.0, seed=seed, diagnostics=True)
    write_run(tmp_path, "gn0", final=40.0, nl="GN")
    text = write_report(tmp_path, plots=False).text
    # write_run's diagnostics after task 3: mean 0.3 / 0.05, var 0.6 / 0.1 (balanced / latest).
    mean_table = text.split("## Running mean after the last task")[1].split("\n## ")[0]
    var_table = text.split("## Running var after the last task")[1].split("\n## ")[0]
    assert "| BN | 0.300 / 0.050 |" in mean_table and "| BN | 0.600 / 0.100 |" in var_table
    assert "| GN |" not in mean_table


def test_plots_are_pngs_and_drift_needs_diagnostics(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path, f"bn{seed}", final=40.0 + seed, seed=seed, diagnostics=True)
        write_run(tmp_path, f"ada{seed}", final=45.0 + seed, seed=seed, nl="AdaB2N", kappa=0.4, lambd=0.1,
                  diagnostics=True)  # fmt: skip
    write_run(tmp_path, "c10", final=50.0, dataset="seq-cifar10", buffer=500)
    files = write_report(tmp_path, tmp_path / "out")
    names = sorted(p.name for p in files.plots)
    assert names == [
        "accuracy_curve__seq-cifar10_er_ace_500.png", "accuracy_curve__seq-fmnist_er_ace_200.png",
        "accuracy_matrix__seq-cifar10_er_ace_500.png", "accuracy_matrix__seq-fmnist_er_ace_200.png",
        "norm_drift__seq-fmnist_er_ace_200.png",
    ]  # fmt: skip
    for png in files.plots:
        assert png.parent == tmp_path / "out"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_each_method_has_its_colour_in_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The accuracy curves and the drift plots draw a method in the vocabulary's colour, whichever methods a figure
    shows (GN has no drift, so the drift plot's first method is another than the curves')."""
    for nl in ("GN", "CN", "AdaB2N"):
        write_run(tmp_path, nl, final=40.0, nl=nl, diagnostics=nl != "GN", **({"kappa": 0.4} if nl == "AdaB2N" else {}))
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.setdefault(path.name.split("__")[0], fig))
    write_report(tmp_path, tmp_path / "out")
    drawn = {
        name: {line.get_label().split(",")[0]: to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
        for name, fig in figures.items()
    }
    expected = {"GN": to_hex("tab:orange"), "CN": to_hex("tab:purple"), "AdaB2N": to_hex("tab:red")}
    assert {m: drawn["accuracy_curve"][m] for m in expected} == expected
    assert {m: drawn["norm_drift"][m] for m in ("CN", "AdaB2N")} == {m: expected[m] for m in ("CN", "AdaB2N")}
    assert len({method_colour(m) for m in METHOD_ORDER}) == len(METHOD_ORDER) == len(METHOD_COLOURS)
    assert not {to_hex(c) for c in OTHER_COLOURS} & {to_hex(c) for c in METHOD_COLOURS.values()}
    assert method_colour("ScaledBN") in OTHER_COLOURS and method_colour("BN-noaffine") in OTHER_COLOURS


def test_layers_without_running_statistics_are_left_out_of_the_drift_plot(tmp_path: Path) -> None:
    write_run(tmp_path, "bn0", final=40.0, diagnostics=True)
    gn = write_run(tmp_path, "gn0", final=40.0, nl="GN")
    doc = json.loads(gn.read_text())
    doc["norm_diagnostics"] = [{"layers": {}, "summary": {}}] * 3  # what --diagnose_norm 1 writes for GN
    gn.write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an all-NaN GN curve warned "Mean of empty slice"
        files = write_report(tmp_path, tmp_path / "out")
    assert "norm_drift__seq-fmnist_er_ace_200.png" in {p.name for p in files.plots}


def test_cli_prints_and_writes_and_skips_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path, "bn0", final=40.0)
    (tmp_path / "class-il" / "broken.json").write_text("{not json")
    assert report.main([str(tmp_path), "--no_plots"]) == 0
    out = capsys.readouterr().out
    assert "| BN | 40.00 (1) |" in out and "skipped" in out and "broken.json" in out
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "report.md", "results.tex", "sensitivity.csv", "summary.csv",
    ]  # fmt: skip
    partial = write_run(tmp_path, "bn1.partial", final=10.0, seed=1)
    incomplete = write_run(tmp_path, "bn2", final=20.0, seed=2)
    doc = json.loads(incomplete.read_text())
    doc["accuracy_matrix"]["class_il"][-1] = [50.0, None, None]
    incomplete.write_text(json.dumps(doc))
    assert report.main([str(tmp_path), "--no_plots"]) == 0
    out = capsys.readouterr().out
    assert "| BN | 40.00 (1 + 1 diverged) |" in out  # a partial file: a diverged run, not in the mean
    assert f"skipped {partial}" not in out and f"skipped {incomplete}: the last task" in out
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_run_py_report_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from normcl.utils.experiments.cli import main

    write_run(tmp_path, "bn0", final=40.0)
    assert main(["--report", "--results_path", str(tmp_path), "--report_dir", str(tmp_path / "tables")]) == 0
    assert "| BN | 40.00 (1) |" in capsys.readouterr().out
    assert (tmp_path / "tables" / "summary.csv").exists() and (tmp_path / "tables" / "results.tex").exists()
