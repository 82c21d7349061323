"""``run.py`` end to end: real small grids trained on the CPU through the local launcher, submitit's local
executor and ``--tune validation``, then checked through the report.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread
from run_helpers import (  # _offline: importing the autouse fixture applies it to this module
    FMNIST_BN,
    REPO,
    SMALL_GRID,
    _offline,  # noqa: F401
    no_gpu,
)

from normcl.utils.experiments.cli import main
from normcl.utils.experiments.report import write_report

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REAL_EXTRA = "--samples_per_class 30 --nf 8 --non_verbose 1 --num_threads 1 --validation 1"
"""The brief's extra flags plus ``--validation 1``: testing on 3 held-out images per class instead of the full test
set makes a run ~4x faster, and exercises the report's validation-based selection."""


# ----------------------------------------------------------------------------------------------- real grids


def _check_real_results(res: Path, logs: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((res / "class-il" / "seq-fmnist" / "er_ace").glob("*.json"))]
    assert len(docs) == 4
    assert sorted((d["args"]["nl"], d["args"]["seed"]) for d in docs) == [
        ("AdaB2N", 0), ("AdaB2N", 1), ("BN", 0), ("BN", 1),
    ]  # fmt: skip
    for d in docs:
        assert d["args"]["load_best_args"] == 1 and d["args"]["buffer_size"] == 200 and d["args"]["nowand"] == 1
        assert (logs / f"{d['name']}.txt").exists()
        if d["args"]["nl"] == "AdaB2N":
            assert (d["args"]["kappa"], d["args"]["lambd"], d["args"]["ada_t0"]) == (0.4, 0.1, 0)
    return docs


ROWS = {"BN": "BN (separate)", "AdaB2N": "AdaB2N (joint)"}
"""Each method's row: the report names it with its forward mode (issue 34)."""


def _check_report(res: Path, docs: list[dict]) -> None:
    files = write_report(res)
    for name in ("BN", "AdaB2N"):
        values = [d["final"]["class_il_avg"] for d in docs if d["args"]["nl"] == name]
        assert len(values) == 2
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert f"| {ROWS[name]} | {mean:.2f} ± {std:.2f} (2) †" in files.text
    rows = files.csv.read_text().splitlines()
    assert len(rows) == 3
    assert rows[1].startswith("BN,seq-fmnist,er_ace,200,,2,0 1,")
    assert rows[2].startswith("AdaB2N,seq-fmnist,er_ace,200,,2,0 1,") and ",0.4,0.1,0,validation," in rows[2]
    assert len(files.plots) == 2
    for png in files.plots:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert imread(png).ndim == 3


def test_real_grid_on_the_cpu_through_run_py_then_resume(tmp_path: Path) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--extra", REAL_EXTRA, "--cpu_workers", "2", "--coldsecs", "0", "--waitsecs", "0"]
    argv += ["--results_path", str(res), "--logdir", str(logs), "--yes"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=> summary: 4 done, 0 skipped (results existed), 0 failed" in proc.stdout
    docs = _check_real_results(res, logs)
    assert all(d["args"]["device"] == "cpu" for d in docs) or "=> GPUs" in proc.stdout
    _check_report(res, docs)
    assert main(argv, probe=no_gpu) == 0
    assert [p.name for p in sorted(res.rglob("*.json"))] == [d["name"] + ".json" for d in docs]


def test_real_run_of_a_buffer_size_without_best_args(tmp_path: Path) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*FMNIST_BN, "--models", "er_ace", "--buffer_sizes", "50", "--no_best_args", "--yes", "--coldsecs", "0"]
    argv += ["--extra", f"--lr 0.05 {REAL_EXTRA}", "--results_path", str(res), "--logdir", str(logs)]
    assert main(argv, probe=no_gpu) == 0
    (path,) = res.rglob("*.json")
    args = json.loads(path.read_text())["args"]
    assert (args["load_best_args"], args["lr"], args["buffer_size"], args["nl"]) == (0, 0.05, 50, "BN")


def test_real_grid_through_submitit_local_executor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [*SMALL_GRID, "--extra", REAL_EXTRA, "--cpu_workers", "2", "--launcher", "submitit-local"]
    argv += ["--results_path", str(res), "--logdir", str(logs), "--yes", "--slurm_time", "20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(": FINISHED, done") == 4
    assert "=> summary: 4 done, 0 skipped (results existed), 0 failed" in out
    assert (logs / "submitit").is_dir()
    docs = _check_real_results(res, logs)
    assert {d["environment"]["threads"] for d in docs} == {1}
    _check_report(res, docs)


# The tuning phases set --validation themselves; --debug_mode (a few steps a task, the first batch of each test set)
# keeps the test phase off the whole 10,000-image test set.
TUNE_EXTRA = REAL_EXTRA.replace(" --validation 1", " --debug_mode 1")


def test_real_tune_validation_grid_chooses_on_validation_then_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    res, logs = tmp_path / "res", tmp_path / "logs"
    argv = [
        "--datasets", "seq-fmnist", "--models", "er_ace", "--methods", "BN", "AdaB2N", "--num_seeds", "1",
        "--buffer_sizes", "200", "--kappas", "0.4", "1.0", "--lambdas", "0.1", "--ada_t0s", "0", "--nowand",
        "--tune", "validation", "--extra", TUNE_EXTRA, "--launcher", "local",
        "--cpu_workers", "1", "--coldsecs", "0", "--waitsecs", "0", "--results_path", str(res), "--logdir", str(logs),
        "--yes",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=> phase 1 (validation) summary: 2 done, 0 skipped (results existed), 0 failed" in proc.stdout
    assert "=> phase 2 (test) summary: 2 done, 0 skipped (results existed), 0 failed" in proc.stdout
    docs = [json.loads(p.read_text()) for p in sorted((res / "class-il" / "seq-fmnist" / "er_ace").glob("*.json"))]
    val = {(d["args"]["kappa"], d["args"]["lambd"], d["args"]["ada_t0"]): d for d in docs if d["args"]["validation"]}
    test = {d["args"]["nl"]: d for d in docs if not d["args"]["validation"]}
    assert len(docs) == 4 and set(val) == {(0.4, 0.1, 0), (1.0, 0.1, 0)} and set(test) == {"BN", "AdaB2N"}
    assert all(d["name"].endswith("_val") and d["args"]["nl"] == "AdaB2N" for d in val.values())
    assert all((logs / f"{d['name']}.txt").exists() for d in docs)
    best = max(sorted(val), key=lambda c: val[c]["final"]["class_il_avg"])
    ada = test["AdaB2N"]["args"]
    assert (ada["kappa"], ada["lambd"], ada["ada_t0"]) == best
    files = write_report(res, plots=False)
    assert f"| {ROWS['AdaB2N']} | seq-fmnist er_ace 200 | {best[0]:g} | 0.1 | 0 | validation |" in files.text
    for name, doc in test.items():
        assert f"| {ROWS[name]} | {doc['final']['class_il_avg']:.2f} (1) |" in files.text  # the test run, not †

    assert main(argv, probe=no_gpu) == 0
    again = capsys.readouterr().out
    assert "=> phase 2 (test) summary: 0 done, 2 skipped (results existed), 0 failed" in again
    assert f"AdaB2N runs kappa {best[0]}, lambd 0.1, ada_t0 0" in again
    assert len(list(res.rglob("*.json"))) == 4
