"""``python -m utils.results_page``: the generated part of ``docs/results.md`` is rewritten, the reading is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import write_run

from normcl.utils.experiments import results_page
from normcl.utils.experiments.report import write_report

PROTOCOL = {"nf": 20, "samples_per_class": 1000, "buffer_mode": "reservoir"}


def make_results(root: Path) -> Path:
    for seed, (final, seconds) in enumerate([(50.0, 100.0), (60.0, 140.0)]):
        path = write_run(
            root,
            f"bn{seed}",
            final=final,
            seed=seed,
            diagnostics=True,
            nf=20,
            samples_per_class=1000,
            buffer_mode="reservoir",
        )
        doc = json.loads(path.read_text())
        doc["timing"] = {"total_seconds": seconds}
        doc["created"] = f"2026-11-26T00:1{seed}:00+00:00"  # seed 0 ran 00:08:20-00:10:00, seed 1 00:08:40-00:11:00
        doc["environment"] = {
            "device": "cpu",
            "threads": 2,
            "torch": "2.14.1",
            "git_commit": f"{seed}" * 40,
            "git_dirty": seed == 1,
            **(
                {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "kernel_limits": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
                if seed == 1
                else {}
            ),
        }
        path.write_text(json.dumps(doc))
    ada = write_run(root, "ada_val", final=70.0, nl="AdaB2N", validation=1, kappa=0.4, lambd=0.1, **PROTOCOL)
    ada.write_text(json.dumps({**json.loads(ada.read_text()), "created": "yesterday"}))  # unreadable: untimed, kept
    (root / "grid_seconds.txt").write_text("3000 hostA 2026-11-26T01:00:00Z\n725 hostB 2026-11-27T01:00:00Z\n")
    report_dir = root / "report"
    write_report(root, report_dir)
    return report_dir


def grid_command(results: Path) -> str:
    """Two run.py lines (the second behind an ``env`` prefix, as the rounding grid's are) that plan 4 runs and 1."""
    grid = f"--datasets seq-fmnist --models er_ace --buffer_sizes 200 --results_path {results} --cpu_workers 2"
    return (
        f"python3 run.py {grid} --methods BN GN --num_seeds 2\n"
        f"env ATEN_CPU_CAPABILITY=default python3 run.py {grid} --methods CN --num_seeds 1"
    )


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("python3 run.py --datasets seq-nope", "cannot be planned: its --dry_run exited 2"),
        ("python3 run.py --datasets seq-fmnist --bogus 1", "run.py's parser stopped it (exit 2)"),
        ("python3 run.py --help", "run.py's parser stopped it (exit 0)"),
        ("normcl-grid --report", "it makes a report, not a grid"),
        ("python3 run.py --extra 'unclosed", "is not a shell command (No closing quotation)"),
    ],
)
def test_a_command_line_that_cannot_be_planned_is_refused(line: str, said: str, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    report_dir = make_results(results)
    page = tmp_path / "results.md"
    assert results_page.main([str(results), str(report_dir), str(page), "--command", line]) == 2
    assert not page.exists()
    err = capsys.readouterr().err
    assert f"error: --command's line {line!r}" in err and said in err


def test_each_spelling_of_the_grid_command_is_planned_and_the_size_is_the_plan_with_or_without_stacks(
    tmp_path: Path,
) -> None:
    grid = f"--datasets seq-fmnist --models er_ace --buffer_sizes 200 --results_path {tmp_path} --methods BN GN"
    lines = [f"python run.py {grid}", f"normcl-grid {grid} --stack 2", f"python -m normcl.run {grid} --num_seeds 1"]
    assert results_page.planned("\n".join([*lines, "bash other.sh"])) == "6 run(s); 6 run(s); 2 run(s)"


def test_busy_seconds_is_the_length_of_the_union_of_intervals() -> None:
    assert results_page.busy_seconds([]) == 0
    assert results_page.busy_seconds([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17  # [0, 12] and [20, 25]
    assert results_page.busy_seconds([(3, 4), (0, 10)]) == 10  # one inside another, in any order


def test_new_page_has_provenance_tables_and_relative_plot_links(tmp_path: Path) -> None:
    results = tmp_path / "results"
    report_dir = make_results(results)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    argv = [str(results), str(report_dir), str(page), "--command", grid_command(results)]
    assert results_page.main(argv) == 0
    text = page.read_text()
    assert grid_command(results) in text
    # The grid each run.py line plans, as its --dry_run does: 2 norms x 2 seeds, then 1 run.
    assert "- Runs: 2 on the test protocol, 1 on the validation split (the grid: 4 run(s); 1 run(s))." in text
    assert "- Machine: cpu, 2 thread(s), torch 2.14.1 (1 runs)." in text  # a file from before issue 22
    assert (
        "- Machine: cpu (AMD EPYC, kernels AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2), 2 thread(s), torch 2.14.1 (1 runs)."
        in text
    )
    code = "commit `0000000000` (1 runs), commit `1111111111` with changed Python files (1 runs), commit `unknown`"
    assert f"- Code: {code} (1 runs)." in text
    assert (
        "- Protocol: `--bs 10`, `--epochs 1`, `--buffer_mode reservoir`, `--nf 20`, `--samples_per_class 1000`" in text
    )
    assert "**a subset of the training data**" in text
    assert "- Compute: 4 min 00 s summed over the runs' own wall times." in text
    busy = "2 min 40 s (the union of the runs' own intervals, 2 of 3 runs timestamped)"
    assert f"- Wall time with a run in progress: {busy}." in text
    assert "- Wall time of the grid command: 1 h 02 min in 2 sitting(s) (a sitting whose machine went away" in text
    assert "| BN | 55.00 ± 7.07 (2) |" in text  # the report's table, mean ± std of 50 and 60
    assert "\n## Class-IL accuracy (%)" not in text and "\n### Class-IL accuracy (%)" in text  # one level down
    link = "../results/report/accuracy_curve__seq-fmnist_er_ace_200.png"
    assert f"]({link})" in text and (page.parent / link).is_file()
    assert "norm_drift__seq-fmnist_er_ace_200.png" in text
    assert text.index(results_page.BEGIN) < text.index(results_page.END) < text.index("## Reading")


def test_rewriting_keeps_the_hand_written_reading(tmp_path: Path) -> None:
    results = tmp_path / "results"
    report_dir = make_results(results)
    page = tmp_path / "results.md"
    page.write_text(f"# Title\n\nintro\n\n{results_page.BEGIN}\nold table\n{results_page.END}\n\n## Reading\n\nmine\n")
    assert results_page.main([str(results), str(report_dir), str(page), "--command", "cmd"]) == 0
    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\n## Reading\n\nmine\n")
    assert "old table" not in text and "| BN |" in text


def test_a_named_part_is_rewritten_between_its_own_markers_one_level_down(tmp_path: Path) -> None:
    results = tmp_path / "results"
    report_dir = make_results(results)
    begin, end = results_page.markers("width")
    main = f"{results_page.BEGIN}\nmain tables\n{results_page.END}"
    page = tmp_path / "results.md"
    page.write_text(f"# Title\n\n{main}\n\n## Width\n\n{begin}\nold\n{end}\n\n## Reading\n")
    argv = [str(results), str(report_dir), str(page), "--command", "cmd", "--part", "width"]
    assert results_page.main(argv) == 0
    text = page.read_text()
    assert text.startswith(f"# Title\n\n{main}\n\n## Width\n\n{begin}\n") and text.endswith(f"{end}\n\n## Reading\n")
    assert "old" not in text and "\n### How these numbers were made" in text and "\n#### Class-IL accuracy (%)" in text
    page.write_text(f"{main}\n")  # a page without the part's markers is refused, and says which to add
    assert results_page.main(argv) == 2 and page.read_text() == f"{main}\n"


def test_page_without_markers_is_refused_and_left_alone(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    report_dir = make_results(results)
    page = tmp_path / "results.md"
    page.write_text("# hand-made\n")
    assert results_page.main([str(results), str(report_dir), str(page), "--command", "cmd"]) == 2
    assert page.read_text() == "# hand-made\n"
    assert "lacks the markers" in capsys.readouterr().err


def test_protocol_of_full_data_runs_names_no_subset() -> None:
    text = results_page.protocol_text([{"batch_size": 10, "n_epochs": 1, "nf": 20, "samples_per_class": None}] * 2)
    assert text == "`--bs 10`, `--epochs 1`, `--nf 20`"


def test_diverged_runs_are_counted_and_their_table_marks_kept(tmp_path: Path) -> None:
    from test_report_diverged import write_partial

    results = tmp_path / "results"
    report_dir = make_results(results)
    write_partial(results, "ada_val_diverged", nl="AdaB2N", validation=1, kappa=1.0, lambd=10.0, **PROTOCOL)
    write_report(results, report_dir, plots=False)
    page = tmp_path / "results.md"
    assert results_page.main([str(results), str(report_dir), str(page), "--command", "cmd"]) == 0
    text = page.read_text()
    assert "- Runs: 2 on the test protocol, 2 on the validation split, 1 of them diverged (non-finite loss).\n" in text
    assert "| 1 |  | diverged (1) |" in text and "\n### Runs that diverged (1)\n" in text
    assert "- Warning:" not in text
