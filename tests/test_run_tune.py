"""``run.py --tune validation``: phase 1 (AdaB²N on the validation split), the per-column choice, and phase 2
(the test runs with that choice), with a tiny child command and hand-written results files instead of training.
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest
from run_helpers import (  # _offline: importing the autouse fixture applies it to this module
    STOPPED,
    _offline,  # noqa: F401
    fake_command,
    flag,
    invocations,
    no_gpu,
)

from normcl.utils.experiments import slurm
from normcl.utils.experiments.cli import main, parse_launcher_args
from normcl.utils.experiments.grid import Run, expand_grid, expand_test, expand_validation
from normcl.utils.experiments.processes import Summary
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.report import write_report
from normcl.utils.experiments.selection import select_configs
from normcl.utils.experiments.tuning import select_from_validation

# ----------------------------------------------------------------------------------------------- --tune validation

TUNE_GRID = [
    "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "AdaB2N-renorm",
    "--num_seeds", "2", "--buffer_sizes", "200", "500", "--kappas", "0.4", "1.0", "--lambdas", "0.1",
    "--ada_t0s", "0", "--nowand", "--tune", "validation",
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


def write_partial(run: Run, stopped: dict | None = STOPPED) -> None:
    """What ``utils/main.py`` leaves when ``run``'s loss diverges: its partial file, here with a high accuracy on
    the tasks it finished (which must not count), and no results file."""
    write_results(run, 99.0)
    doc = json.loads(run.results.read_text())
    doc["final"] = {"class_il_avg": 99.0, "task_il_avg": 99.0, "forgetting": None}
    run.partial.write_text(json.dumps(doc if stopped is None else {**doc, "stopped": stopped}))
    run.results.unlink()


def test_tune_validation_chooses_past_a_diverged_configuration_and_never_chooses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Buffer 200: configuration A diverged on validation, B is chosen; buffer 500: both diverged, so no choice and
    no AdaB²N test runs, a warning, yet exit code 0; the diverged validation runs are not started again."""
    argv = tune_argv(tmp_path, "--yes", "--coldsecs", "0", "--waitsecs", "0")
    args = parse_launcher_args(argv)
    phase1 = expand_validation(args)
    for run in phase1:
        if run.buffer_size == 200 and run.config == CONFIG_B:
            write_results(run, 60.0)
        else:
            write_partial(run, None if run.buffer_size == 500 else STOPPED)  # 500: partial files of before "stopped"
    out = tmp_path / "out"
    command = fake_command(out)
    (out / "release").write_text("")
    assert main([*argv, "--dry_run"], command=command) == 0
    listing = capsys.readouterr().out
    assert "=> phase 1: 4 AdaB2N validation run(s) (seeds 0): 4 already done (3 diverged), 0 to run\n" in listing
    assert listing.count("[diverged] ") == 3 + 1 and "[later]" not in listing
    assert "[diverged] seq-fmnist er_ace 500 AdaB2N, AdaB2N-renorm x 2 seed(s): not run, every AdaB2N " in listing
    assert "=> 4 validation run(s) + 8 test run(s)" in listing  # BN x 2 buffers x 2 seeds, AdaB2N(-renorm) 200

    assert main(argv, probe=no_gpu, command=command) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert (
        "=> phase 1 (validation) summary: 0 done, 1 skipped (results existed), 0 failed, 3 diverged (non-finite "
        "loss, not rerun)"
    ) in text
    a200 = next(r for r in phase1 if r.buffer_size == 200 and r.config == CONFIG_A)
    assert f"   diverged: {a200.name} (non-finite loss at step 42, task 2); partial results: {a200.partial}" in text
    assert (
        "=> seq-fmnist er_ace 200: AdaB2N runs kappa 1.0, lambd 0.1, ada_t0 0 (mean validation class-IL accuracy "
        "60.00%; 1 diverged configuration(s) never chosen)\n"
    ) in text
    assert "=> seq-fmnist er_ace 500: AdaB2N runs" not in text
    assert "=> phase 2 (test) summary: 8 done, 0 skipped (results existed), 0 failed" in text
    assert captured.err.splitlines() == [
        "warning: no AdaB2N configuration for seq-fmnist er_ace 500, so its AdaB2N runs are not started: every "
        "configuration has a diverged validation run (non-finite loss); choose other --lambdas or --kappas, or "
        "delete the .partial.json files of its validation runs to run them again"
    ]
    chosen = {("seq-fmnist", "er_ace", 200): CONFIG_B}
    assert invocations(out) == {r.name: 1 for r in expand_test(args, chosen)}
    assert not any(name.endswith("_val") for name in invocations(out))
    selection = select_from_validation(phase1)
    assert selection.chosen == chosen and not selection.missing
    assert selection.diverged == {
        ("seq-fmnist", "er_ace", 200): [CONFIG_A], ("seq-fmnist", "er_ace", 500): [CONFIG_A, CONFIG_B],
    }  # fmt: skip
    assert selection.all_diverged == [("seq-fmnist", "er_ace", 500)]
    records, _ = load_records(tmp_path / "res")
    assert select_configs(records) == chosen  # the report's rule, on the same files
