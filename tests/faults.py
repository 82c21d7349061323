"""Faults injected into a run, so that what a test needs happens on every CPU instead of on the one it was written on.

A run's loss turning NaN depends, for any real learning rate, on the kernels' rounding (online training amplifies
its last bit); a NaN input does not: every output, loss and gradient that reads it is NaN, on any kernel set.
"""

from __future__ import annotations

from typing import Any

import pytest
from torch import Tensor

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
