"""The command line: an end-to-end run as a subprocess, ``--help``, and the one-line errors of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from normcl.utils import results as results_module
from normcl.utils.args import parse_args
from normcl.utils.main import main

REPO_ROOT = Path(__file__).resolve().parent.parent
N_TASKS = 5
SMALL = [
    "--lr", "0.03",
    "--bs", "10",
    "--epochs", "1",
    "--nf", "8",
    "--samples_per_class", "100",
    "--validation", "1",  # 10 held-out test images per class: evaluation stays cheap
    "--seed", "1",
    "--nowand", "1",
    "--non_verbose", "1",
    "--device", "cpu",
    "--num_threads", "1",
]  # fmt: skip
# keys the format has always had; the documented format may add more
TOP_KEYS = {
    "format_version", "name", "args", "setting", "forward_mode", "accuracy_matrix", "random_accuracy", "final",
    "timing", "environment", "created",
}  # fmt: skip
FINAL_KEYS = {
    "class_il_avg", "task_il_avg", "forgetting", "bwt", "fwt", "task_il_forgetting", "task_il_bwt", "task_il_fwt",
    "aaa", "min_acc", "wc_acc", "task_il_aaa", "task_il_min_acc", "task_il_wc_acc",
}  # fmt: skip
ENVIRONMENT_KEYS = {
    "python",
    "torch",
    "torchvision",
    "numpy",
    "device",
    "threads",
    "cpu",
    "cpu_capability",
    "kernel_limits",
    "git_commit",
    "git_dirty",
    "hostname",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No downloads; and restore torch's thread count, which an in-process ``--num_threads`` changes."""
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cli_env() -> dict[str, str]:
    """Environment of a subprocess run from the repository root: no downloads, no wandb."""
    env = dict(os.environ)
    env["NORMCL_OFFLINE"] = "1"
    env["WANDB_MODE"] = "disabled"
    return env


def run_cli(*argv: str, module: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    entry = ["-m", "utils.main"] if module else ["utils/main.py"]
    return subprocess.run(
        [sys.executable, *entry, *argv], cwd=REPO_ROOT, env=cli_env() | env, capture_output=True, text=True, timeout=300
    )


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# ---------------------------------------------------------------- reference metrics, from the documented definitions


def ref_forgetting(acc: list[list[float | None]]) -> float:
    last = len(acc) - 1
    return sum(max(acc[i][j] for i in range(j, last + 1)) - acc[last][j] for j in range(last)) / last


def ref_bwt(acc: list[list[float | None]]) -> float:
    last = len(acc) - 1
    return sum(acc[last][j] - acc[j][j] for j in range(last)) / last


def ref_fwt(acc: list[list[float | None]], random: list[float]) -> float:
    return sum(acc[j - 1][j] - random[j] for j in range(1, len(acc))) / (len(acc) - 1)


def documented_keys() -> tuple[set[str], set[str], set[str]]:
    """Top-level, ``final`` and ``environment`` keys of the format documented in ``utils/results.py``."""
    doc = results_module.__doc__ or ""
    lines = [line for line in doc[doc.index("::") + 2 :].splitlines() if not line.strip().startswith("#")]
    text = " ".join(lines)
    text = text[text.index("{") + 1 : text.rindex("}")]
    nested = {}
    for name in ("final", "environment"):
        match = re.search(rf'"{name}":\s*\{{([^}}]*)\}}', text)
        assert match, f"{name} not documented"
        nested[name] = set(re.findall(r'"(\w+)"', match.group(1)))
    previous = None
    while previous != text:  # drop nested {...} and [...] so only top-level keys remain
        previous, text = text, re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", "", text)
    return set(re.findall(r'"(\w+)":', text)), nested["final"], nested["environment"]


def test_documented_format_has_the_core_keys():
    top, final, environment = documented_keys()
    assert top >= TOP_KEYS
    assert final == FINAL_KEYS
    assert environment >= ENVIRONMENT_KEYS


def check_matrix(matrix: list[list[Any]]) -> None:
    """5x5; lower triangle and superdiagonal are accuracies in [0, 100]; everything else null."""
    assert len(matrix) == N_TASKS and all(len(row) == N_TASKS for row in matrix)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if j <= i + 1:
                assert isinstance(v, int | float) and 0 <= v <= 100, (i, j, v)
            else:
                assert v is None, (i, j, v)


# ---------------------------------------------------------------- end to end


def test_cli_end_to_end_writes_documented_results(tmp_path: Path):
    proc = run_cli("--dataset", "seq-fmnist", "--model", "er", "--buffer_size", "50", *SMALL,
                   "--results_path", str(tmp_path), "--run_name", "cli_run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "class-il" / "seq-fmnist" / "er" / "cli_run.json"
    assert path.is_file()
    assert str(path) in proc.stdout
    assert files_under(tmp_path) == [path], "only the results file is left (no checkpoint, no temporary file)"

    results = json.loads(path.read_text())
    top, final_keys, environment_keys = documented_keys()
    assert set(results) == top
    assert results["format_version"] == 1
    assert results["name"] == "cli_run"
    assert results["setting"] == "class-il"
    assert results["forward_mode"] in ("separate", "joint")
    assert results["args"]["model"] == "er" and results["args"]["buffer_size"] == 50
    assert set(results["final"]) == final_keys
    assert set(results["environment"]) == environment_keys
    assert results["environment"]["device"] == "cpu"
    timing = results["timing"]
    assert len(timing["train_seconds"]) == N_TASKS and len(timing["eval_seconds"]) == N_TASKS
    assert timing["total_seconds"] >= sum(timing["train_seconds"])

    final = results["final"]
    for kind, prefix in (("class_il", ""), ("task_il", "task_il_")):
        acc = results["accuracy_matrix"][kind]
        check_matrix(acc)
        random = results["random_accuracy"][kind]
        assert len(random) == N_TASKS and all(0 <= v <= 100 for v in random)
        assert final[f"{kind}_avg"] == pytest.approx(sum(acc[-1]) / N_TASKS)
        assert final[f"{prefix}forgetting"] == pytest.approx(ref_forgetting(acc))
        assert final[f"{prefix}forgetting"] >= 0
        assert final[f"{prefix}bwt"] == pytest.approx(ref_bwt(acc))
        assert final[f"{prefix}fwt"] == pytest.approx(ref_fwt(acc, random))


@pytest.mark.slow
def test_the_results_name_the_cpu_and_its_kernel_set(tmp_path: Path):
    """A run's numbers depend on the CPU's kernels: the results file says which ran (here limited to the plain C++
    kernels, as ``ATEN_CPU_CAPABILITY=default`` asks)."""
    argv = ["--dataset", "seq-fmnist", "--model", "sgd", *SMALL, "--results_path", str(tmp_path), "--run_name", "k"]
    proc = run_cli(*argv, "--debug_mode", "1", ATEN_CPU_CAPABILITY="default")
    assert proc.returncode == 0, proc.stderr
    environment = json.loads((tmp_path / "class-il" / "seq-fmnist" / "sgd" / "k.json").read_text())["environment"]
    assert environment["cpu_capability"] == "DEFAULT"
    assert environment["kernel_limits"]["ATEN_CPU_CAPABILITY"] == "default"
    assert environment["threads"] == 1
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        assert environment["cpu"] and f": {environment['cpu']}\n" in cpuinfo.read_text()


@pytest.mark.slow
def test_help_mentions_every_flag():
    """Every flag the parser takes, the components' own (``--kappa``, ``--alpha``) and ``--member`` included."""
    from normcl.utils.parser import build_parser

    flags = {f for action in build_parser()._actions for f in action.option_strings if f.startswith("--")}
    assert {"--dataset", "--kappa", "--alpha", "--member", "--nowand", "--load_best_args"} <= flags
    proc = run_cli("--help", module=True)
    assert proc.returncode == 0, proc.stderr
    mentioned = set(re.findall(r"--[a-z0-9_]+", proc.stdout))
    assert flags <= mentioned, sorted(flags - mentioned)


def test_forward_mode_help_names_the_joint_norms_and_models_from_the_registries():
    """The default forward pass is the reference's: ``--forward_mode``'s help names every norm whose layer asks for a
    joint pass and every model whose reference runs one, and no other (a new norm or model is named without anyone
    editing the help)."""
    from normcl.models import MODELS
    from normcl.models.utils import NORMS
    from normcl.utils.parser import build_parser, help_of

    (action,) = [a for a in build_parser()._actions if "--forward_mode" in a.option_strings]
    norms, models = help_of(action).split("else the model's own")
    for name in NORMS.names():
        joint = getattr(NORMS.get(name).layer, "prefers_joint_forward", False)
        assert (re.search(rf"\b{re.escape(name)}\b", norms) is not None) == joint, name
    for name in MODELS.names():
        joint = MODELS.get(name).REFERENCE_FORWARD == "joint"
        assert (re.search(rf"\b{re.escape(name)},", models) is not None) == joint, name
    assert "AdaB2N" in norms and "er," in models


# ---------------------------------------------------------------- bad input


def fmnist(*argv: str) -> list[str]:
    return ["--dataset", "seq-fmnist", *argv]


BAD_INPUTS = {
    "unknown dataset": (
        ["--dataset", "seq-nope", "--model", "sgd", "--lr", "0.1"],
        ["seq-nope", "seq-fmnist", "seq-cifar10", "seq-cifar100", "seq-miniimg"],
    ),
    "unknown model": (fmnist("--model", "ewc_nope", "--lr", "0.1"), ["ewc_nope", "sgd", "derpp", "er_ace"]),
    "unknown norm": (fmnist("--model", "sgd", "--lr", "0.1", "--nl", "XN"), ["'XN'", "BN"]),
    "missing buffer": (fmnist("--model", "er", "--lr", "0.1"), ["--buffer_size"]),
    "negative buffer": (fmnist("--model", "er", "--lr", "0.1", "--buffer_size", "-5"), ["--buffer_size", "-5"]),
    "negative lr": (fmnist("--model", "sgd", "--lr", "-0.1"), ["--lr", "-0.1"]),
    "kappa above 1": (fmnist("--model", "sgd", "--lr", "0.1", "--kappa", "2"), ["--kappa", "2"]),
    "zero samples per class": (
        fmnist("--model", "sgd", "--lr", "0.1", "--samples_per_class", "0"),
        ["--samples_per_class", "positive"],
    ),
    "ring smaller than tasks": (
        fmnist("--model", "er", "--lr", "0.1", "--buffer_mode", "ring", "--buffer_size", "3"),
        ["--buffer_size 3", "5 tasks", "ring"],
    ),
    "missing lr": (fmnist("--model", "sgd"), ["--lr", "--load_best_args"]),
    "negative lambda": (fmnist("--model", "sgd", "--lr", "0.1", "--lambd", "-1"), ["--lambd", "-1"]),
    "unknown buffer mode": (
        fmnist("--model", "er", "--lr", "0.1", "--buffer_size", "10", "--buffer_mode", "fifo"),
        ["fifo", "reservoir", "ring"],
    ),
}  # fmt: skip


def assert_one_line_error(err: str, fragments: list[str]) -> None:
    line = err.strip()
    assert line.startswith("error: "), err
    assert "\n" not in line, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv, fragments = BAD_INPUTS[case]
    results = tmp_path / "results"
    assert main([*argv, "--nowand", "1", "--results_path", str(results)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, fragments)
    assert files_under(results) == []


def test_missing_data_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    empty = tmp_path / "empty"
    empty.mkdir()
    results = tmp_path / "results"
    argv = ["--dataset", "seq-cifar10", "--model", "sgd", *SMALL, "--data_path", str(empty)]
    assert main([*argv, "--results_path", str(results)]) == 2
    _, err = capsys.readouterr()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert_one_line_error(err, ["seq-cifar10", *names, str(empty), "NORMCL_OFFLINE"])
    assert files_under(results) == []
    assert files_under(empty) == [], "nothing downloaded offline"


def test_data_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    not_a_dir = tmp_path / "data.txt"
    not_a_dir.write_text("not a directory")
    results = tmp_path / "results"
    argv = fmnist("--model", "sgd", *SMALL, "--data_path", str(not_a_dir), "--results_path", str(results))
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert_one_line_error(err, ["--data_path", str(not_a_dir), "is a file"])
    assert files_under(results) == []


def test_load_best_args_fills_reference_values():
    args = parse_args(fmnist("--model", "er_ace", "--buffer_size", "500", "--load_best_args", "1"))
    assert args.lr == 0.03
    assert (args.batch_size, args.minibatch_size, args.n_epochs) == (10, 10, 1)
    # explicit flags win over the best args
    args = parse_args(fmnist("--model", "er_ace", "--buffer_size", "500", "--load_best_args", "--lr", "0.5"))
    assert args.lr == 0.5


def test_load_best_args_unknown_buffer_size(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    argv = fmnist("--model", "er_ace", "--buffer_size", "123", "--load_best_args", "1", "--results_path", str(tmp_path))
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert_one_line_error(err, ["123", "500"])


def test_model_incompatible_with_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from normcl.models.sgd import Sgd

    monkeypatch.setattr(Sgd, "COMPATIBILITY", ("task-il",))
    results = tmp_path / "results"
    assert main([*fmnist("--model", "sgd", "--lr", "0.1"), "--nowand", "1", "--results_path", str(results)]) == 2
    assert_one_line_error(capsys.readouterr().err, ["'sgd'", "class-il", "task-il"])
    assert files_under(results) == []


def test_code_version_is_the_commit_and_whether_python_files_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "REPO_ROOT", tmp_path)
    assert results_module.code_version() == {"git_commit": None, "git_dirty": None}  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("one\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert results_module.code_version() == {"git_commit": head, "git_dirty": False}
    (tmp_path / "notes.md").write_text("two\n")  # not code
    assert results_module.code_version()["git_dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert results_module.code_version() == {"git_commit": head, "git_dirty": True}
    installed = tmp_path / ".venv" / "site-packages" / "normcl"  # installed inside another project's repository
    installed.mkdir(parents=True)
    monkeypatch.setattr(results_module, "REPO_ROOT", installed)
    assert results_module.code_version() == {"git_commit": None, "git_dirty": None}
