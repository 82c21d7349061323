"""The Python API, ``import normcl`` (issue 25): ``load_runner`` and ``train`` are a run of ``utils/main.py`` (the same
results file, bit for bit where it is deterministic), ``get_avail_args`` reads the command line's parser, bad input
raises the command line's one-line ``UserError``, and importing the package stays light (no torch)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import _offline  # noqa: F401  (autouse: no downloads; torch's thread count restored after a run)

import normcl
from normcl.models.utils import norms, task_aware
from normcl.utils.core.errors import UserError
from normcl.utils.parser import build_parser

REPO = Path(__file__).resolve().parent.parent
ARGS = {
    "nl": "AdaB2N", "kappa": 0.4, "lambd": 0.1, "buffer_size": 50, "lr": 0.03, "bs": 10, "epochs": 1, "nf": 8,
    "samples_per_class": 20, "validation": True, "seed": 1, "num_threads": 1, "nowand": True, "non_verbose": True,
    "device": "cpu",
}  # fmt: skip
"""A small real run (ER-ACE with AdaB²N on Split Fashion-MNIST, tests/test_golden.py's size), as the API's dict."""


def as_flags(args: dict) -> list[str]:
    return [
        token for name, value in args.items() for token in (f"--{name}", str(int(value) if value is True else value))
    ]


@pytest.mark.slow
def test_a_run_from_the_api_writes_the_results_file_of_the_same_command_line(tmp_path: Path) -> None:
    model, dataset = normcl.load_runner("er_ace", "seq-fmnist", {**ARGS, "results_path": tmp_path / "api"})
    assert type(model).__name__ == "ErAce" and dataset.N_TASKS == 5
    returned = normcl.train(model, dataset)
    (written,) = (tmp_path / "api").rglob("*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(returned))  # what the API returns is the file
    argv = ["--model", "er_ace", "--dataset", "seq-fmnist", *as_flags(ARGS), "--results_path", str(tmp_path / "cli")]
    env = {**os.environ, "NORMCL_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "utils/main.py", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    (cli_file,) = (tmp_path / "cli").rglob("*.json")
    cli = json.loads(cli_file.read_text())
    for key in ("accuracy_matrix", "loss_curve", "parameters_sha256", "final", "forward_mode"):
        assert returned[key] == cli[key], key
    assert {k: v for k, v in returned["args"].items() if k not in ("run_name", "results_path")} == {
        k: v for k, v in cli["args"].items() if k not in ("run_name", "results_path")
    }


def test_bad_input_raises_the_command_lines_one_line_error() -> None:
    cases = {
        "unknown argument 'kapa' (did you mean 'kappa'?); normcl.get_avail_args()": ("er_ace", {"kapa": 0.4}),
        "argument --nf: invalid int value: 'wide'": ("er_ace", {"nf": "wide", "lr": 0.03}),
        "argument --validation: invalid choice: '2' (choose from 0, 1)": ("er_ace", {"validation": 2, "lr": 0.1}),
        "--lr is required: pass --lr 0.03, or --load_best_args for the reference value": ("sgd", {}),
        "model 'er_ace' replays samples: pass --buffer_size N (e.g. --buffer_size 500)": ("er_ace", {"lr": 0.03}),
        "unknown model 'erace'; choose one of: der, derpp, er, er_ace, joint, sgd": ("erace", {}),
        "pass the model as load_runner's own argument, not in args": ("er_ace", {"model": "er"}),
        "load_runner trains one run": ("sgd", {"member": "--seed 1"}),
    }
    for message, (model, args) in cases.items():
        with pytest.raises(UserError) as raised:
            normcl.load_runner(model, "seq-fmnist", args)
        assert str(raised.value).startswith(message), str(raised.value)
        assert "\n" not in str(raised.value)


def test_a_value_that_starts_with_a_dash_is_a_value(tmp_path: Path) -> None:
    model, _ = normcl.load_runner("er_ace", "seq-fmnist", {**ARGS, "run_name": "-ablation", "results_path": tmp_path})
    assert model.args.run_name == "-ablation"


def test_get_avail_args_are_the_command_lines_flags() -> None:
    required, optional = normcl.get_avail_args()
    assert set(required) == {"dataset", "model"}
    flags = {a.dest for a in build_parser()._actions} - {"help", "member"}
    assert set(required) | set(optional) == flags
    assert optional["nf"] == {"default": 64, "description": "ResNet-18 base width: 64 = full, 20 = reduced ResNet-18"}
    assert optional["alpha"]["default"] is None and "der: 0.3; derpp: 0.1" in optional["alpha"]["description"]

    required, optional = normcl.get_avail_args(model="derpp", dataset="seq-fmnist")
    assert required == {}
    assert optional["alpha"]["default"] == 0.1 and optional["beta"]["default"] == 0.5  # DER++'s own defaults
    assert "smoothing" not in optional and "kappa" in optional  # the norm's options: any --nl
    assert optional["kappa"]["default"] is None
    assert "alpha" not in normcl.get_avail_args(model="er_ace")[1]
    with pytest.raises(UserError, match=r"^unknown dataset 'fmnist'; choose one of: seq-cifar10, "):
        normcl.get_avail_args(dataset="fmnist")


def test_the_public_names_are_the_projects_own_objects() -> None:
    assert normcl.NORMS is norms.NORMS and normcl.convert_norm is norms.convert_norm
    assert normcl.TaskAwareNorm is task_aware.TaskAwareNorm and normcl.UserError is UserError
    assert {"AdaB2N", "BN", "GN", "TBBN"} <= set(normcl.NORMS.names())
    assert set(normcl.__all__) == set(normcl._HOMES) and set(normcl.__all__) <= set(dir(normcl))
    with pytest.raises(AttributeError, match="module 'normcl' has no attribute 'Trainer'"):
        normcl.Trainer  # noqa: B018


def test_importing_the_package_imports_no_torch(tmp_path: Path) -> None:
    code = "import sys, normcl; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'normcl'}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "['normcl']"


@pytest.mark.slow
def test_the_documented_conversion_prints_what_the_page_says(tmp_path: Path) -> None:
    """The first example of docs/own-code.md, from another folder, prints the list its comment shows."""
    page = (REPO / "docs" / "own-code.md").read_text()
    code = re.search(r"```python[^\n]*\n(.*?)```", page, re.S).group(1)  # type: ignore[union-attr]
    printed = re.search(r"# (\[.*\])\n", code).group(1)  # type: ignore[union-attr]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == printed
