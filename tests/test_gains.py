"""The report's gains over BN (``utils/experiments/gains.py``, its tables ``gain_tables.py``) on results files whose
numbers are known: each method against the BN row run as it is, pooled at the seed level, the warnings when a
comparison differs in more than the norm or pools runs of different code or machines, and a declared primary
endpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_report import write_run
from test_report_diverged import write_partial

from normcl.utils.experiments import gain_tables, gains
from normcl.utils.experiments.records import load_records
from normcl.utils.experiments.report import main, write_report
from normcl.utils.experiments.tables import build_report

ADA = {"nl": "AdaB2N", "kappa": 0.4, "lambd": 0.1, "ada_t0": 1, "mode": "joint"}
BN_JOINT = {"forward_mode": "joint", "mode": "joint"}
MACHINE = {"git_commit": "a" * 40, "cpu": "AMD EPYC", "cpu_capability": "AVX2"}
# Per column and seed (0, 1, 2): BN-joint and AdaB2N. Differences: er_ace 1, 3, 0; derpp 3, -1, 2.
COLUMNS = {"er_ace": ([40.0, 42.0, 44.0], [41.0, 45.0, 44.0]), "derpp": ([50.0, 50.0, 50.0], [53.0, 49.0, 52.0])}


def grid(root: Path, environment: dict[str, Any] = MACHINE, **extra: Any) -> None:
    """BN (separate), BN-joint and AdaB2N (joint) in two columns, seeds 0-2."""
    for model, (bn, ada) in COLUMNS.items():
        for seed, (b, a) in enumerate(zip(bn, ada, strict=True)):
            kw = {"seed": seed, "model": model, "environment": environment, **extra}
            write_run(root, f"{model}-bn{seed}", final=b - 5, mode="separate", **kw)
            write_run(root, f"{model}-bnj{seed}", final=b, **BN_JOINT, **kw)
            write_run(root, f"{model}-ada{seed}", final=a, **ADA, **kw)


def test_a_joint_norm_is_compared_with_bn_joint_and_pooled_per_seed_by_hand(tmp_path: Path) -> None:
    grid(tmp_path)
    report = build_report(load_records(tmp_path)[0])
    comp = gains.comparison(report, "AdaB2N")
    assert comp is not None and (comp.baseline, comp.differs) == ("BN-joint", ())
    assert comp.label == "AdaB2N (joint) − BN (joint)"
    p = gains.pooled(report, comp)
    # Per seed, the mean of the two columns: (1 + 3) / 2, (3 - 1) / 2, (0 + 2) / 2 = 2, 1, 1.
    assert p is not None and p.estimate.values == (2.0, 1.0, 1.0) and (p.columns, p.incomplete) == (2, 0)
    sd = math.sqrt(1 / 3)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 df)
    assert p.estimate.low == pytest.approx(4 / 3 - half, rel=1e-6)
    assert p.estimate.p_exact == 2 / 8 and p.estimate.d_z == pytest.approx((4 / 3) / sd)
    text = write_report(tmp_path, plots=False).text
    assert (
        "| AdaB2N (joint) − BN (joint) | final class-IL | 3 | 2 | 0 | +1.33 | [-0.10, +2.77] | 0.250 | 2.31 |" in text
    )
    # BN-joint itself against BN: the forward pass alone, said to differ in it.
    assert "| BN (joint) − BN (separate) | final class-IL | 3 | 2 | 0 | +5.00 |" in text
    assert "- ⚠ BN (joint) − BN (separate) differs in more than the norm: the forward mode (joint against " in text
    assert "AdaB2N (joint) − BN (joint) differs" not in text and "⚠ AdaB2N (joint) − BN (joint) pools" not in text
    assert "| AdaB2N (joint) − BN (joint) | +1.33" in text  # one machine, one commit: no ⚠
    assert "| BN (separate) | 45.00 ± 0.00 (3) | 37.00 ± 2.00 (3) |" in text  # rows carry their forward mode
    assert "| comparison | seq-fmnist derpp 200 | seq-fmnist er_ace 200 |" in text
    assert "| AdaB2N (joint) − BN (joint) | +1.33 ± 2.08 (3; ahead on 2) | +1.33 ± 1.53 (3; ahead on 2) |" in text


def test_without_bn_joint_a_joint_norm_is_compared_with_bn_and_the_table_says_what_differs(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path, f"bn{seed}", final=40.0, seed=seed, mode="separate")
        write_run(tmp_path, f"tbbn{seed}", final=42.0, seed=seed, nl="TBBN", mode="joint")
        write_run(tmp_path, f"cn{seed}", final=41.0, seed=seed, nl="CN", no_affine=1, mode="separate")
    report = build_report(load_records(tmp_path)[0])
    tbbn, cn = gains.comparison(report, "TBBN"), gains.comparison(report, "CN")
    assert tbbn is not None and tbbn.baseline == "BN" and tbbn.differs == ("the forward mode (joint against separate)",)
    assert cn is not None and cn.differs == ("affine parameters (CN (separate) runs with `--no_affine`)",)
    text = write_report(tmp_path, plots=False).text
    assert "| TBBN (joint) − BN (separate) ⚠ | +2.00 ± 0.00 (2; ahead on 2) |" in text  # marked in the column table
    pooled = text.split("## Gain over BN pooled over columns")[1]
    assert (
        "- ⚠ TBBN (joint) − BN (separate) differs in more than the norm: the forward mode (joint against separate)."
        in pooled
    )
    assert "- ⚠ CN (separate) − BN (separate) differs in more than the norm: affine parameters" in pooled


def test_a_comparison_pooling_code_versions_and_machines_is_flagged_with_counts(tmp_path: Path) -> None:
    grid(tmp_path)
    other = {"git_commit": "b" * 40, "cpu": "Intel Xeon", "cpu_capability": "AVX512"}
    for model in COLUMNS:
        write_run(
            tmp_path, f"{model}-bnj0", final=COLUMNS[model][0][0], seed=0, model=model, environment=other, **BN_JOINT
        )
    text = write_report(tmp_path, plots=False).text
    line = (
        "- ⚠ AdaB2N (joint) − BN (joint) pools 12 runs of 2 code versions (aaaaaaa: 10, bbbbbbb: 2); 2 CPU models "
        "(AMD EPYC: 10, Intel Xeon: 2); 2 kernel sets (AVX2: 10, AVX512: 2)."
    )
    assert line in text


def test_the_primary_endpoint_scores_a_diverged_run_at_chance_and_stays_out_of_the_family(tmp_path: Path) -> None:
    grid(tmp_path)
    (tmp_path / "class-il" / "seq-fmnist" / "derpp" / "derpp-ada2.json").unlink()
    write_partial(tmp_path, "derpp-ada2", seed=2, model="derpp", **ADA)
    report = build_report(load_records(tmp_path)[0])
    primary = gains.Primary("AdaB2N", "BN-joint", "class_il")
    text = "\n".join(gain_tables.markdown(report, "| method |", "| --- |", primary))
    # Seed 2, derpp: chance (10 %) − 50 = -40; seed 2's mean (0 - 40) / 2 = -20; seeds 0 and 1 as before: 2, 1.
    comp = gains.comparison(report, "AdaB2N")
    assert comp is not None
    assert gains.pooled(report, comp, at_chance=True).estimate.values == (2.0, 1.0, -20.0)  # type: ignore[union-attr]
    assert "## Primary endpoint (declared): AdaB2N (joint) − BN (joint), final class-IL" in text
    assert "a run that diverged scores chance (10 %)" in text
    assert "- Units: 3 seeds, 2 of 2 columns (0 seeds short of a column)." in text
    assert "- Gain: -5.67 points" in text and "ahead on 2 of 3 seeds" in text
    assert "- Verdict: not resolved" in text
    assert "- Without the seeds that hold a diverged run: 2 seeds, +1.50 points" in text
    pooled = text.split("## Gain over BN pooled over columns")[1]
    assert "| AdaB2N (joint) − BN (joint) | final class-IL |" in pooled
    assert "| primary, not in the family: its section decides (diverged runs at chance) | – |" in pooled
    # The family: 2 comparisons x 1 metric, less the primary.
    assert "the table's 1 rows are one family" in pooled


def test_the_primary_endpoint_gives_no_verdict_before_every_seed_has_every_column(tmp_path: Path) -> None:
    """An interim look (seed 2 of derpp's BN-joint missing; then a third column with AdaB²N only) shows its figures
    as interim and decides nothing, even where its p and interval would."""
    grid(tmp_path)
    (tmp_path / "class-il" / "seq-fmnist" / "derpp" / "derpp-bnj2.json").unlink()
    primary = gains.Primary("AdaB2N", "BN-joint", "class_il")
    text = "\n".join(gain_tables.markdown(build_report(load_records(tmp_path)[0]), "| method |", "| --- |", primary))
    assert "- Units: 3 seeds, 2 of 2 columns (1 seeds short of a column)." in text
    assert "- Interim gain: " in text and f"- Verdict: {gains.INTERIM}." in text
    write_run(tmp_path, "der-ada0", final=60.0, seed=0, model="der", environment=MACHINE, **ADA)
    write_run(tmp_path, "derpp-bnj2", final=50.0, seed=2, model="derpp", environment=MACHINE, **BN_JOINT)
    text = "\n".join(gain_tables.markdown(build_report(load_records(tmp_path)[0]), "| method |", "| --- |", primary))
    assert "- Units: 3 seeds, 2 of 3 columns (0 seeds short of a column, 1 columns without both)." in text
    assert f"- Verdict: {gains.INTERIM}." in text


def test_a_row_holm_rejects_gets_its_side_of_0_and_the_others_the_compatible_level(tmp_path: Path) -> None:
    """Seven seeds all ahead: exact sign-flip p 2/128; with BN (joint) − BN (separate) beside it (p ≥ 0.5), the family
    of two rejects one, which gets only its side of 0 (Strassburger & Bretz), the other its interval at 1 − 0.05/1."""
    for seed in range(7):
        kw = {"seed": seed, "environment": MACHINE}
        write_run(tmp_path, f"bn{seed}", final=40.0 + seed, mode="separate", **kw)
        write_run(tmp_path, f"bnj{seed}", final=40.0 + seed + (1 if seed % 2 else -1), **BN_JOINT, **kw)
        write_run(tmp_path, f"ada{seed}", final=41.0 + 2 * seed, **ADA, **kw)
    pooled = "\n".join(gain_tables.pooled_table(build_report(load_records(tmp_path)[0])))
    assert "Holm's adjustment rejects 1 at 0.05" in pooled
    assert "at the level compatible with Holm's procedure, 95.00 %" in pooled
    rows = {line.split(" | ")[0]: line.split(" | ") for line in pooled.splitlines() if line.startswith("| ")}
    assert rows["| AdaB2N (joint) − BN (joint)"][-2:] == ["0.031", "above 0 |"]  # 2/128 doubled by Holm
    assert rows["| BN (joint) − BN (separate)"][-1].startswith("[")


def test_the_verdict_needs_the_test_and_the_interval() -> None:
    from normcl.utils.experiments.inference import Estimate

    assert gains.verdict(Estimate.of([float(v) for v in range(1, 11)])).startswith("a gain is shown")
    assert gains.verdict(Estimate.of([-float(v) for v in range(1, 11)])).startswith("a loss is shown")
    assert gains.verdict(Estimate.of([1.0, 2.0, 3.0, 4.0, 5.0])).startswith("not resolved")  # p >= 0.0625
    assert gains.verdict(Estimate.of([1.0])).startswith("not resolved (too few seeds")


def test_the_cli_takes_a_declared_primary_and_refuses_an_unknown_metric(tmp_path: Path, capsys) -> None:
    grid(tmp_path)
    assert main([str(tmp_path), "--no_plots", "--primary", "AdaB2N", "BN-joint", "class_il"]) == 0
    assert "## Primary endpoint (declared): AdaB2N (joint) − BN (joint), final class-IL" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--no_plots", "--primary", "AdaB2N", "BN-joint", "accuracy"])
    assert stop.value.code == 2
    assert "unknown metric 'accuracy'; choose one of: class_il, aaa, min_acc, wc_acc" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--primary", "AdaB2M", "BN-joint", "class_il"], "--primary: 'AdaB2M' is no method"),
        (["--primary", "AdaB2N", "BN-sideways", "class_il"], "--primary: 'BN-sideways' is no method"),
        (["--primary_seeds", "10"], "--primary_seeds takes a positive number of seeds, with --primary"),
        (["--reruns_of", "base", "--primary", "AdaB2N", "BN", "class_il"], "to which --primary, --no_plots does not"),
    ],
)
def test_the_cli_refuses_what_it_cannot_apply_in_one_line(flags: list[str], message: str, tmp_path: Path, capsys):
    grid(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "--no_plots", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def test_the_declared_seeds_keep_the_verdict_interim_until_they_are_in(tmp_path: Path) -> None:
    grid(tmp_path)
    report = build_report(load_records(tmp_path)[0])
    text = "\n".join(gain_tables.primary_section(report, gains.Primary("AdaB2N", "BN-joint", "class_il", seeds=4)))
    assert "- Units: 3 seeds of the 4 declared, 2 of 2 columns (0 seeds short of a column)." in text
    assert f"- Verdict: {gains.INTERIM}." in text
    text = "\n".join(gain_tables.primary_section(report, gains.Primary("AdaB2N", "BN-joint", "class_il", seeds=3)))
    assert "- Verdict: not resolved" in text


def test_two_runs_of_one_seed_in_a_cell_are_refused_naming_the_files(tmp_path: Path, capsys) -> None:
    """Pairing by seed holds one run per seed and row in a column: a rerun beside its run is refused, not averaged
    in one place and silently dropped in the other."""
    grid(tmp_path)
    write_run(tmp_path, "er_ace-ada0-again", final=30.0, seed=0, model="er_ace", environment=MACHINE, **ADA)
    assert main([str(tmp_path), "--no_plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "repeats seed 0 of" in err and len(err.splitlines()) == 1
    assert "move reruns to a folder of their own (utils.report --reruns_of)" in err


def test_a_replication_on_chosen_seeds_pools_only_their_runs_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    grid(tmp_path / "runs")
    out = tmp_path / "seeds1-2"
    assert main([str(tmp_path / "runs"), "--seeds", "2", "1", "--no_plots", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith(f"# Results in {tmp_path / 'runs'}, the runs of seeds 1, 2 only\n")
    # Seeds 1 and 2 of the grid: per-seed gains 1 and 1 (seed 0's 2 left out).
    assert "| AdaB2N (joint) − BN (joint) | final class-IL | 2 | 2 | 0 | +1.00 |" in text
    assert "| BN (joint) | 50.00 ± 0.00 (2) | 43.00 ± 1.41 (2) |" in text  # derpp: 50, 50; er_ace: 42, 44
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--seeds", "1", "7", "--no_plots", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no runs of seed(s) 7 in {tmp_path / 'runs'}; pass seeds")
    assert not (tmp_path / "none").exists()
    # A subset is never the declared comparison: no primary endpoint, no results page from it.
    for flags in (["--primary", "AdaB2N", "BN-joint", "class_il"], ["--page", "p.md", "--command", "x"]):
        with pytest.raises(SystemExit) as stop:
            main([str(tmp_path / "runs"), "--seeds", "1", *flags, "--out", str(tmp_path / "none")])
        assert stop.value.code == 2 and f"error: --seeds reports a subset of the runs, which {flags[0]}" in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "none").exists()
