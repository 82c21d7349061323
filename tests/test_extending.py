"""Extending the framework is adding one file: a norm, a model or a dataset with a flag of its own (issue 13).

Each test copies the repository's code to a temporary clone, writes the new component's file there and nothing
else, and runs that clone's ``utils/main.py`` end to end: the new flag is parsed, validated, handed to the component
and recorded in the results file. The files written are the examples of the documentation's page
``docs/extending.md``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO = Path(__file__).resolve().parent.parent
PAGE = (REPO / "docs" / "extending.md").read_text()
SMALL = [
    "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "8", "--samples_per_class", "20", "--validation", "1",
    "--seed", "1", "--nowand", "1", "--non_verbose", "1", "--device", "cpu", "--num_threads", "1",
    "--ignore_other_metrics", "1",
]  # fmt: skip


def page_example(path: str) -> str:
    """The Python block that follows the page's line naming ``path`` (so the page shows what is tested)."""
    match = re.search(rf"`{re.escape(path)}`[^\n]*:\n\n```python\n(.*?)```", PAGE, re.S)
    assert match, f"docs/extending.md has no example for {path}"
    return match.group(1)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's code, without its tests, documents, results or history, plus the page's three examples."""
    root = tmp_path_factory.mktemp("clone") / "normcl"
    ignored = shutil.ignore_patterns(".*", "docs", "tests", "results", "data", "logs", "__pycache__", "*.egg-info")
    shutil.copytree(REPO, root, ignore=ignored)
    for path in ("models/utils/scaled_bn.py", "models/er_smooth.py", "datasets/seq_fmnist3.py"):
        assert not (root / path).exists()
        (root / path).write_text(page_example(path))
    return root


def run_main(clone: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # The clone's folder is named normcl: on PYTHONPATH, its parent makes the clone the package its code imports.
    env = {**os.environ, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(clone.parent)}
    tmp_path.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(clone / "utils" / "main.py"), *argv, "--results_path", str(tmp_path / "res")]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def results_args(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "res").rglob("*.json")
    return json.loads(path.read_text())["args"]


def test_a_new_norm_with_its_own_flag_runs_end_to_end(clone: Path, tmp_path: Path) -> None:
    argv = ["--dataset", "seq-fmnist", "--model", "er", "--buffer_size", "20", "--nl", "ScaledBN", "--bn_scale", "0.5"]
    proc = run_main(clone, tmp_path, *SMALL, *argv)
    assert proc.returncode == 0, proc.stderr
    args = results_args(tmp_path)
    assert (args["nl"], args["bn_scale"]) == ("ScaledBN", 0.5)


def test_the_new_norm_stacks_as_declared_each_member_its_run_alone(clone: Path, tmp_path: Path) -> None:
    """``@stackable(per_channel())`` on the page's class: in float64 each member is its run alone, bit for bit;
    ``--bn_scale``, which the declaration does not take per member, must be shared."""
    argv = [*SMALL, "--dataset", "seq-fmnist", "--model", "er", "--buffer_size", "20", "--nl", "ScaledBN"]
    argv += ["--bn_scale", "0.5", "--dtype", "float64"]
    stack = run_main(
        clone, tmp_path / "stack", *argv, "--member", "--seed 1 --run_name a", "--member", "--seed 2 --run_name b"
    )
    assert stack.returncode == 0, stack.stderr
    for name, seed in (("a", "1"), ("b", "2")):
        alone = run_main(clone, tmp_path / "alone", *argv, "--seed", seed, "--run_name", name)
        assert alone.returncode == 0, alone.stderr
        stacked, single = (json.loads(next((tmp_path / d / "res").rglob(f"{name}.json")).read_text())
                           for d in ("stack", "alone"))  # fmt: skip
        for key in ("accuracy_matrix", "loss_curve", "parameters_sha256"):
            assert stacked[key] == single[key], key
    members = ["--member", "--seed 1 --bn_scale 0.5", "--member", "--seed 2 --bn_scale 2"]
    refused = run_main(clone, tmp_path / "refused", *argv, *members)
    assert refused.returncode == 2 and "stacked members differ in --bn_scale (0.5 and 2.0)" in refused.stderr


def test_the_new_flag_is_validated_and_listed(clone: Path, tmp_path: Path) -> None:
    proc = run_main(
        clone, tmp_path, *SMALL, "--dataset", "seq-fmnist", "--model", "sgd", "--nl", "ScaledBN", "--bn_scale", "-1"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --bn_scale must be positive, got -1.0"
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("*.json"))
    help_text = run_main(clone, tmp_path, "--help").stdout
    assert "--bn_scale" in help_text and "ScaledBN" in help_text and "--smoothing" in help_text


def test_a_new_model_with_its_own_flag_runs_end_to_end(clone: Path, tmp_path: Path) -> None:
    argv = ["--dataset", "seq-fmnist", "--model", "er_smooth", "--buffer_size", "20", "--smoothing", "0.2"]
    proc = run_main(clone, tmp_path, *SMALL, *argv)
    assert proc.returncode == 0, proc.stderr
    args = results_args(tmp_path)
    assert (args["model"], args["smoothing"]) == ("er_smooth", 0.2)


def test_a_new_dataset_runs_end_to_end(clone: Path, tmp_path: Path) -> None:
    proc = run_main(clone, tmp_path, *SMALL, "--dataset", "seq-fmnist3", "--model", "sgd")
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "res").rglob("*.json")
    assert len(json.loads(path.read_text())["accuracy_matrix"]["class_il"]) == 3


def test_the_new_model_stacks_each_member_its_run_alone(clone: Path, tmp_path: Path) -> None:
    """The page's ``er_smooth`` declares ``STACKS = True``: two members with their own ``--smoothing`` train as one
    stack, each its run alone bit for bit in float64 (losses, accuracies, trained parameters)."""
    argv = [*SMALL, "--dataset", "seq-fmnist", "--model", "er_smooth", "--buffer_size", "20", "--dtype", "float64"]
    members = {"a": "--seed 1 --smoothing 0.1", "b": "--seed 2 --smoothing 0.3"}
    flags = [token for name, own in members.items() for token in ("--member", f"{own} --run_name {name}")]
    stack = run_main(clone, tmp_path / "stack", *argv, *flags)
    assert stack.returncode == 0, stack.stderr
    for name, own in members.items():
        alone = run_main(clone, tmp_path / "alone", *argv, *own.split(), "--run_name", name)
        assert alone.returncode == 0, alone.stderr
        stacked, single = (json.loads(next((tmp_path / d / "res").rglob(f"{name}.json")).read_text())
                           for d in ("stack", "alone"))  # fmt: skip
        assert stacked["args"]["smoothing"] == single["args"]["smoothing"]
        for key in ("accuracy_matrix", "loss_curve", "parameters_sha256"):
            assert stacked[key] == single[key], key
