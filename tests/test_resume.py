"""Checkpoint / resume: SIGKILL at several points, SIGTERM, non-finite loss, incompatible checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import inject_nan

from normcl.utils.core.errors import UserError

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

REPO = Path(__file__).resolve().parent.parent
RUN = [
    "--dataset", "seq-fmnist", "--model", "derpp", "--nl", "AdaB2N", "--kappa", "0.4", "--lambd", "0.1",
    "--buffer_size", "60", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--seed", "1", "--nf", "8",
    "--samples_per_class", "50", "--nowand", "1", "--non_verbose", "1", "--num_threads", "1",
    "--eval_batch_size", "500", "--validation", "1",
]  # fmt: skip


EVERY = "6"
"""``--checkpoint_every`` of the stopped runs: at 9 steps a task, checkpoints fall at steps 6, 9 (task 1's end), 12
(task 2, batch 3) and 18 (task 2's end: task 3, batch 0)."""
FAULTS = Path(__file__).with_name("faults.py")


def env() -> dict[str, str]:
    return {**os.environ, "NORMCL_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start(results: Path, name: str, *extra: str, stop: tuple[str, int] | None = None) -> subprocess.Popen:
    """The run in a process of its own; ``stop=(SIGNAL, STEP)``: stopped by ``SIGNAL`` just before step ``STEP``
    (``tests/faults.py``)."""
    head = ["utils/main.py"] if stop is None else [str(FAULTS), stop[0], str(stop[1])]
    cmd = [sys.executable, *head, *RUN, "--results_path", str(results), "--run_name", name, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def position(ckpt: Path) -> dict:
    """Where a checkpoint continues: its position, with the model's task index."""
    payload = torch.load(ckpt, weights_only=True)
    return {**payload["position"], "task": payload["model"]["_extra_state"]["current_task"]}


def folder(results: Path) -> Path:
    return results / "class-il" / "seq-fmnist" / "derpp"


def outcome(path: Path) -> dict:
    """What a resumed run must share with the uninterrupted one: accuracies, the training loss at every read, and
    the trained parameters bit for bit."""
    data = json.loads(path.read_text())
    assert data["parameters_sha256"] is not None and len(data["loss_curve"]) >= 5
    keys = ("accuracy_matrix", "random_accuracy", "final", "loss_curve", "parameters_sha256")
    return {key: data[key] for key in keys}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    results = tmp_path_factory.mktemp("reference")
    proc = start(results, "ref")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert not (folder(results) / "ref.ckpt").exists(), "a finished run removes its checkpoint"
    return outcome(folder(results) / "ref.json")


@pytest.mark.parametrize(
    ("label", "before", "where"),
    [("mid-task", 13, {"task": 1, "batch": 3, "step": 12}), ("task-boundary", 19, {"task": 2, "batch": 0, "step": 18})],
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(
    tmp_path: Path, reference: dict, label: str, before: int, where: dict
) -> None:
    ckpt = folder(tmp_path) / f"{label}.ckpt"
    proc = start(tmp_path, label, "--checkpoint_every", EVERY, stop=("SIGKILL", before))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, out
    assert where.items() <= position(ckpt).items()
    assert not (folder(tmp_path) / f"{label}.json").exists()
    resumed = start(tmp_path, label, "--checkpoint_every", EVERY, "--resume", "1")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "Resuming" in out
    assert outcome(folder(tmp_path) / f"{label}.json") == reference


def test_sigterm_saves_a_checkpoint_that_resumes_as_the_uninterrupted_run(tmp_path: Path, reference: dict) -> None:
    ckpt = folder(tmp_path) / "term.ckpt"
    proc = start(tmp_path, "term", stop=("SIGTERM", 13))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 143, out
    assert "checkpoint saved" in out
    payload = torch.load(ckpt, weights_only=True)
    assert {"task": 1, "batch": 4, "step": 13}.items() <= position(ckpt).items(), "saved after the signalled step"
    assert {"model", "optimizer", "buffer", "rng", "history", "args"} <= set(payload)
    assert any(k.endswith("eta") for k in payload["model"]), "AdaB2N's momentum state is checkpointed"
    resumed = start(tmp_path, "term", "--resume", "1")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert outcome(folder(tmp_path) / "term.json") == reference


def test_sigint_saves_a_checkpoint_and_exits_130_then_resume_equals_the_uninterrupted_run(
    tmp_path: Path, reference: dict
) -> None:
    proc = start(tmp_path, "int", stop=("SIGINT", 13))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 130, out
    assert position(folder(tmp_path) / "int.ckpt")["step"] == 13
    assert "stopped by SIGINT: checkpoint saved; continue with --resume 1" in out
    resumed = start(tmp_path, "int", "--resume", "1")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert outcome(folder(tmp_path) / "int.json") == reference


class Crash(BaseException):
    """A process that dies between two steps, in-process: nothing after the last checkpoint survives."""


def test_a_resumed_run_repeats_every_step_of_the_uninterrupted_one(tmp_path: Path, monkeypatch, capsys) -> None:
    """Per-step losses (every optimiser step, not every 25th) and the parameters' digest: a run that dies at step
    50 resumes from its last checkpoint (step 44, the end of task 4: 11 steps a task, a checkpoint every 20 steps
    and after each task) and takes steps 45 on exactly as the uninterrupted run did."""
    from normcl.models.utils.continual_model import ContinualModel
    from normcl.utils.args import parse_args
    from normcl.utils.main import run
    from normcl.utils.training import Trainer

    losses: list[float] = []
    step, train_step = ContinualModel.step, Trainer.train_step

    def record(self: ContinualModel, loss: torch.Tensor) -> torch.Tensor:
        total = step(self, loss)
        losses.append(float(total))
        return total

    def crash_at_50(self: Trainer, *args) -> torch.Tensor:
        if self.pos.step == 50:
            raise Crash
        return train_step(self, *args)

    monkeypatch.setattr(ContinualModel, "step", record)
    argv = [*RUN, "--results_path", str(tmp_path), "--checkpoint_every", "20", "--samples_per_class", "60"]
    threads = torch.get_num_threads()
    try:
        (whole,) = run([parse_args([*argv, "--run_name", "whole"])])
        uninterrupted, losses[:] = losses[:], []
        with monkeypatch.context() as patch, pytest.raises(Crash):
            patch.setattr(Trainer, "train_step", crash_at_50)
            run([parse_args([*argv, "--run_name", "crash"])])
        losses.clear()
        capsys.readouterr()
        (resumed,) = run([parse_args([*argv, "--run_name", "crash", "--resume", "1"])])
    finally:
        torch.set_num_threads(threads)
    assert "Resuming crash at task 5, step 44" in capsys.readouterr().out
    assert losses == uninterrupted[44:]
    assert resumed["parameters_sha256"] == whole["parameters_sha256"] is not None
    assert resumed["loss_curve"] == whole["loss_curve"] and resumed["accuracy_matrix"] == whole["accuracy_matrix"]


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path) -> None:
    proc = start(tmp_path, "cfg", stop=("SIGKILL", 13))
    proc.wait(timeout=600)
    assert (folder(tmp_path) / "cfg.ckpt").exists()
    other = [*RUN, "--results_path", str(tmp_path), "--run_name", "cfg", "--resume", "1", "--lr", "0.1"]
    done = subprocess.run(
        [sys.executable, "utils/main.py", *other], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "--lr 0.03 (now 0.1)" in done.stderr
    assert not (folder(tmp_path) / "cfg.json").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from normcl.utils.main import main

    assert main([*RUN, "--results_path", str(tmp_path), "--run_name", "none", "--resume", "1"]) == 2


@pytest.mark.kernels
@pytest.mark.parametrize(("step", "task"), [(3, 0), (12, 1)])  # 9 steps a task
def test_non_finite_loss_stops_with_partial_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], step: int, task: int
) -> None:
    """The loss turns NaN at ``step`` (an injected NaN batch): exit 3, the completed tasks in the partial file."""
    from normcl.utils.main import main

    inject_nan(monkeypatch, step)
    threads = torch.get_num_threads()
    try:
        assert main([*RUN, "--results_path", str(tmp_path), "--run_name", "nan"]) == 3
    finally:
        torch.set_num_threads(threads)
    assert f"the loss became NaN or infinite at step {step} (task {task + 1}); lower --lr" in capsys.readouterr().err
    assert not (folder(tmp_path) / "nan.json").exists()
    partial = json.loads((folder(tmp_path) / "nan.partial.json").read_text())
    assert partial["stopped"] == {"reason": "non-finite loss", "task": task, "step": step}
    completed = [row for row in partial["accuracy_matrix"]["class_il"] if row[0] is not None]
    assert len(completed) == task and (partial["final"]["class_il_avg"] is None) == (task == 0)


def _checkpoint_with_args(path: Path, saved_args: list[dict]) -> None:
    from normcl.utils.checkpoint import save_checkpoint

    save_checkpoint(path, {"args": saved_args})


def test_speed_flags_may_change_on_resume_and_older_formats_are_refused(tmp_path: Path) -> None:
    """``--compile``/``--channels_last`` change no number, so a run may resume with or without them; ``--amp``
    changes the numbers and must match. A checkpoint of format 1 (before every run was a stack) is refused by name."""
    import io

    from normcl.utils.args import parse_args
    from normcl.utils.checkpoint import comparable_args, load_checkpoint

    args = parse_args([*RUN, "--compile", "1"])
    saved = comparable_args(parse_args([*RUN, "--channels_last", "1"]))
    _checkpoint_with_args(tmp_path / "run.ckpt", [saved])
    assert load_checkpoint(tmp_path / "run.ckpt", [args], torch.device("cpu"))["args"] == [saved]
    amp = parse_args([*RUN, "--amp", "1"])
    with pytest.raises(UserError, match=r"--amp 0 \(now 1\)"):
        load_checkpoint(tmp_path / "run.ckpt", [amp], torch.device("cpu"))

    buffer = io.BytesIO()
    torch.save({"version": 1, "args": saved}, buffer)
    (tmp_path / "old.ckpt").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="has format version 1, this code writes 2; delete it to start over"):
        load_checkpoint(tmp_path / "old.ckpt", [args], torch.device("cpu"))


SEED = RUN.index("--seed")
STACK = [*RUN[:SEED], *RUN[SEED + 2 :], "--member", "--seed 1 --run_name s1"]
STACK += ["--member", "--seed 2 --kappa 1.0 --lambd 1 --run_name s2"]


def start_stack(results: Path, *extra: str, stop: tuple[str, int] | None = None) -> subprocess.Popen:
    head = ["utils/main.py"] if stop is None else [str(FAULTS), stop[0], str(stop[1])]
    cmd = [sys.executable, *head, *STACK, "--results_path", str(results), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def stack_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The uninterrupted stack's outcome, per member."""
    results = tmp_path_factory.mktemp("stack_reference")
    proc = start_stack(results)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return {name: outcome(folder(results) / f"{name}.json") for name in ("s1", "s2")}


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_stack_stopped_mid_task_then_resumed_gives_every_member_the_uninterrupted_results(
    tmp_path: Path, stack_reference: dict[str, dict], stop: signal.Signals
) -> None:
    """A stack (AdaB²N, two members with other seeds and options) killed, or stopped by SIGTERM (which saves a
    checkpoint at the next step and exits 143), continues with ``--resume 1``: its checkpoint holds each member's
    generator, buffer, history and the stacked network."""
    proc = start_stack(tmp_path, "--checkpoint_every", EVERY, stop=(stop.name, 13))
    ckpt = folder(tmp_path) / "s1.stack.ckpt"
    out, _ = proc.communicate(timeout=600)
    if stop == signal.SIGTERM:
        assert proc.returncode == 143 and "stopped by SIGTERM: checkpoint saved" in out, out
    else:
        assert proc.returncode == -signal.SIGKILL, out
    assert position(ckpt)["task"] == 1 and position(ckpt)["step"] == (13 if stop == signal.SIGTERM else 12)
    resumed = start_stack(tmp_path, "--checkpoint_every", EVERY, "--resume", "1")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "Resuming s1, s2 at task 2" in out
    assert not ckpt.exists(), "a finished stack removes its checkpoint"
    for name in ("s1", "s2"):
        assert outcome(folder(tmp_path) / f"{name}.json") == stack_reference[name]
