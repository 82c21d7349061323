"""``--compile 1`` compiles once per batch shape for a whole run: nothing in AdaB²N's graph depends on the task.

The network is captured by dynamo as ``--compile 1`` captures it; only the backend is dynamo's ``eager`` (the
graphs are run, not code-generated), because what is counted here is dynamo's graph captures and recompilations,
which the backend does not decide, and inductor would spend minutes of CI on code generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.args import parse_args
from normcl.utils.main import run

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)


def test_compilations_do_not_grow_after_the_first_task(tmp_path: Path, monkeypatch) -> None:
    """ER replays from its first task on, so the first task already meets every batch shape of the run (10, then
    10 + 10; 90 images a task, no partial batch): whatever compiles later would be the task's doing. Before the
    mask over tasks, AdaB²N's slices by the number of seen tasks recompiled the network in every task."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw))
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    graphs: list[int] = []
    begin = ContinualModel.meta_begin_task

    def counting_begin(self: ContinualModel, *args: Any, **kwargs: Any) -> None:
        graphs.append(counters["stats"]["unique_graphs"])  # after the previous task's training and evaluation
        begin(self, *args, **kwargs)

    monkeypatch.setattr(ContinualModel, "meta_begin_task", counting_begin)
    torch._dynamo.reset()
    counters.clear()
    argv = ["--dataset", "seq-fmnist", "--model", "er", "--nl", "AdaB2N", "--buffer_size", "50", "--lr", "0.05"]
    argv += ["--bs", "10", "--epochs", "1", "--nf", "4", "--samples_per_class", "50", "--validation", "1"]
    argv += ["--compile", "1", "--seed", "0", "--ignore_other_metrics", "1"]
    argv += ["--nowand", "1", "--non_verbose", "1", "--device", "cpu", "--results_path", str(tmp_path)]
    try:
        (results,) = run([parse_args(argv)])
    finally:
        torch._dynamo.reset()
    graphs.append(counters["stats"]["unique_graphs"])
    assert len(graphs) == 6  # before each of the 5 tasks, and after the run
    assert graphs[0] == 0 and graphs[1] > 0, graphs  # the first task compiled (training and evaluation shapes)
    assert graphs[1:] == [graphs[1]] * 5, f"graphs compiled before each task: {graphs}"
    assert len(results["accuracy_matrix"]["class_il"]) == 5
