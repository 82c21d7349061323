"""Faults injected into a run, so that what a test needs happens on every CPU instead of on the one it was written on.

A run's loss turning NaN depends, for any real learning rate, on the kernels' rounding (online training amplifies
its last bit); a NaN input does not: every output, loss and gradient that reads it is NaN, on any kernel set.

A run stopped by a signal at a chosen step, likewise, instead of a test polling for a checkpoint and signalling when
it sees one: ``python tests/faults.py SIGNAL STEP ARGS...`` is ``utils/main.py ARGS...`` that sends itself ``SIGNAL``
just before training step ``STEP`` (:func:`signal_before`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
from torch import Tensor

from normcl.utils.main import main
from normcl.utils.training import Trainer


def inject_nan(monkeypatch: pytest.MonkeyPatch, step: int, member: int | None = None) -> None:
    """Make the stream inputs of training step ``step`` (1-based, over the run) NaN: a run alone's whole batch
    (``member=None``), or member ``member``'s batch of a stack. That member's loss is NaN from this step on."""
    original = Trainer.train_step

    def train_step(self: Trainer, data: Any, idx: Tensor) -> Tensor:
        if self.pos.step + 1 != step:
            return original(self, data, idx)
        model, observe = self.model, self.model.observe

        def poisoned(inputs: Tensor, labels: Tensor, not_aug: Tensor) -> Tensor:
            inputs = inputs.clone()
            inputs[... if member is None else member] = float("nan")
            return observe(inputs, labels, not_aug)

        object.__setattr__(model, "observe", poisoned)
        try:
            return original(self, data, idx)
        finally:
            object.__delattr__(model, "observe")

    monkeypatch.setattr(Trainer, "train_step", train_step)


def signal_before(step: int, signum: int) -> None:
    """Send this process ``signum`` just before training step ``step`` (1-based, over the run). A SIGKILL ends it
    there, with the checkpoints written until then on disk as they were; SIGTERM and SIGINT reach the trainer's
    handler, which finishes step ``step``, saves a checkpoint there and exits (143, 130)."""
    original = Trainer.train_step

    def train_step(self: Trainer, data: Any, idx: Tensor) -> Tensor:
        if self.pos.step + 1 == step:
            os.kill(os.getpid(), signum)
        return original(self, data, idx)

    Trainer.train_step = train_step  # type: ignore[method-assign]  # this process only: it is about to stop


if __name__ == "__main__":
    name, at, *argv = sys.argv[1:]
    signal_before(int(at), signal.Signals[name])
    sys.exit(main(argv))
