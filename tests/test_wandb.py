"""wandb logging: offline without an API key (no login prompt), nothing at all with ``--nowand 1``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from normcl.utils.args import parse_args
from normcl.utils.wandb_logger import WandbLogger, wandb_api_key_configured

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFLINE_MESSAGE = "wandb: no API key configured, logging offline (upload later with `wandb sync`)"


@pytest.fixture
def no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No API key anywhere: no WANDB_API_KEY, a HOME without ~/.netrc; returns that HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_api_key_detection(no_wandb_credentials: Path, monkeypatch: pytest.MonkeyPatch):
    assert not wandb_api_key_configured()
    netrc = no_wandb_credentials / ".netrc"
    netrc.write_text("machine example.org login me password secret\n")
    netrc.chmod(0o600)
    assert not wandb_api_key_configured()
    netrc.write_text("machine api.wandb.ai login user password abc123\n")
    assert wandb_api_key_configured()
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_api_key_configured()


def test_run_without_api_key_logs_offline(no_wandb_credentials: Path, tmp_path: Path):
    results = tmp_path / "results"
    argv = [
        "--dataset", "seq-fmnist", "--model", "sgd", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "8",
        "--samples_per_class", "50", "--validation", "1", "--debug_mode", "1", "--non_verbose", "1",
        "--device", "cpu", "--num_threads", "1", "--seed", "0", "--eval_every", "2", "--eval_subset", "4",
        "--results_path", str(results), "--run_name", "wandb_run",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "utils/main.py", *argv],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,  # a login prompt would fail instead of hanging
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert OFFLINE_MESSAGE in proc.stdout
    assert (results / "class-il" / "seq-fmnist" / "sgd" / "wandb_run.json").is_file()
    runs = list((results / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].is_dir(), list((results / "wandb").iterdir())
    (log,) = runs[0].glob("*.wandb")
    assert b"anytime/class_il_avg" in log.read_bytes()  # the anytime curve (--eval_every) is logged
    assert not (no_wandb_credentials / ".netrc").exists(), "no login was attempted"


def test_each_stacked_member_is_its_own_wandb_run(no_wandb_credentials: Path, tmp_path: Path):
    results = tmp_path / "results"
    argv = [
        "--dataset", "seq-fmnist", "--model", "sgd", "--bs", "10", "--epochs", "1", "--nf", "8",
        "--samples_per_class", "20", "--validation", "1", "--debug_mode", "1", "--non_verbose", "1",
        "--device", "cpu", "--num_threads", "1", "--results_path", str(results), "--wandb_group", "g",
        "--member", "--seed 0 --lr 0.03 --run_name first", "--member", "--seed 1 --lr 0.01 --run_name second",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "utils/main.py", *argv], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((results / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    # The records are protobuf: each run's config holds its run_name as the JSON string '"NAME"' (the command line,
    # also recorded, names both members unquoted).
    logs = [next(run.glob("*.wandb")).read_bytes() for run in runs]
    names = [[name for name in (b'"first"', b'"second"') if name in log] for log in logs]
    assert sorted(names) == [[b'"first"'], [b'"second"']], names


def test_nowand_creates_nothing(tmp_path: Path):
    results = tmp_path / "results"
    args = parse_args(
        ["--dataset", "seq-fmnist", "--model", "sgd", "--lr", "0.1", "--nowand", "1", "--results_path", str(results)]
    )
    args.run_name = "quiet"
    logger = WandbLogger(args)
    assert logger.run is None
    logger.log({"loss": 1.0}, step=1)
    logger.log_task(0, [50.0], [50.0], step=1)
    logger.log_final({"class_il_avg": 50.0, "fwt": None})
    logger.finish()
    assert not results.exists()
    assert list(tmp_path.iterdir()) == []
