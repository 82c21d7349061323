"""A stacked run's member is the same run as alone (issues 14 and 23): float64, every registered norm (and the
methods vocabulary's pseudo-methods) under every registered model, enumerated from the registries.

Two members with other seeds, learning rates and per-member options of the norm and the model train as one stack;
each must give the per-step losses, the accuracy matrices and the trained parameters (``parameters_sha256``) of its
run alone, bit for bit, and its results file under the name and in the schema it would have alone. Which
combinations must stack is stated here, not read from the code under test: every registered model but those in
:data:`RUNS_ALONE`, under every registered norm but those in :data:`NORMS_ALONE`; those must be refused with their
one-line error (their run alone still runs), and a model or norm that stops stacking fails. Every run alone is also
checked to train its norm under its model as the reference does (``check_trained``: the forward mode, the task-aware
layers' task count, AdaB²N's task-weight gradients). Runs are small: ``--nf 4`` (8 for the group norms), 10 images
per class (two steps a task), a validation split as test set; two combinations run four members. A pseudo-method
that only sets the forward mode its model already has (``BN-joint`` under ER, or under a model without replay) is
the same run as its norm and is not repeated.
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiers import one_norm_per_stacking, slow_but

from normcl.models import MODELS
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.continual_model import ContinualModel
from normcl.models.utils.norms import NORMS
from normcl.models.utils.task_aware import task_aware_layers
from normcl.utils.args import parse_args
from normcl.utils.experiments.methods import PSEUDO_METHODS, method_flags, norm_of, runs_without_affine
from normcl.utils.main import main, run
from normcl.utils.member_args import member_free, parse_members, stacking_problem

OPTION_VALUES = {"kappa": ("0.4", "1.0", "0.0", "0.7"), "lambd": ("0.1", "1", "0.01", "0.5"),
                 "ada_t0": ("0", "1", "0", "2"), "alpha": ("0.3", "0.05", "0.1", "0.5"),
                 "beta": ("1.0", "0.2", "0.5", "0.1")}  # fmt: skip
"""Values of the options members may differ in, one per member (an option not listed keeps its default)."""
SEEDS_AND_RATES = ["--seed 0", "--seed 1 --lr 0.05", "--seed 2", "--seed 1 --lr 0.01"]
RUNS_ALONE = {"joint": "its final training reads the model's one dataset, and members have class orders of their own"}
"""The registered models that must refuse to stack, and why; every other registered model must stack."""
NORMS_ALONE: dict[str, str] = {}
"""The registered norms that must refuse to stack, and why (none: every norm's layer declares its stacking)."""
REFERENCE_FORWARD = {"er": "joint"}
"""How each reference forwards stream and replayed samples when no layer asks otherwise: mammoth's ER concatenates
them, every other model forwards them separately (a model with one part, e.g. sgd or joint, has no choice)."""
PER_CLASS = 10  # two steps a task


def repeats_its_norm(model: str, method: str) -> bool:
    """A pseudo-method that only sets a forward mode its model has anyway: the same run as its norm."""
    extra = {k: v for k, v in PSEUDO_METHODS.get(method, {}).items() if k != "nl"}
    if set(extra) != {"forward_mode"}:
        return False
    return not MODELS.get(model).USES_BUFFER or REFERENCE_FORWARD.get(model, "separate") == extra["forward_mode"]


METHODS = [*NORMS.names(), *PSEUDO_METHODS]
ANY_KERNELS = {("derpp", "AdaB2N", 2), ("er_ace", "TBBN", 2)}
"""Cases ``.ci/run`` runs again under its second kernel set: a stack equals its runs alone bit for bit on any CPU."""
CASES = [(model, method, 2) for model in MODELS.names() for method in METHODS if not repeats_its_norm(model, method)]
CASES += [("er_ace", "AdaB2N", 4), ("derpp", "CN", 4)]
CASES = [pytest.param(*case, marks=[pytest.mark.kernels] if case in ANY_KERNELS else []) for case in CASES]
FAST = {("er_ace", norm, 2) for norm in one_norm_per_stacking()}
"""The fast tier's stacks (``tests/tiers.py``): ER-ACE with a norm of each way of stacking, and TBBN."""
CASES = slow_but(CASES, FAST)


def norm_flags(method: str) -> list[str]:
    """The method's flags as the launcher gives them (a pseudo-method's, ``--no_affine 1`` for CN)."""
    return method_flags(method) + (["--no_affine", "1"] if runs_without_affine(method) else [])


def members(model: str, method: str, k: int) -> list[str]:
    """``k`` members: other seeds and learning rates, and other values of the options they may differ in."""
    args = parse_args(["--dataset", "seq-fmnist", "--model", model, "--buffer_size", "50", "--lr", "0.1",
                       *norm_flags(method)])  # fmt: skip
    free = member_free(args) & set(OPTION_VALUES)
    return [
        " ".join([SEEDS_AND_RATES[i], f"--run_name m{i}", *(f"--{o} {OPTION_VALUES[o][i]}" for o in sorted(free))])
        for i in range(k)
    ]


def nf(method: str) -> str:
    """``--nf 4``, except for the group norms: at 4 every group is one channel (32 groups at most), at 8 the last
    stage has two channels a group, so a stacked group that mixed members' or channels' order would show."""
    return "8" if method in ("GN", "CN") else "4"


def shared(model: str, method: str, per_class: int, results: Path) -> list[str]:
    return [
        "--dataset", "seq-fmnist", "--model", model, "--buffer_size", "50", *norm_flags(method), "--lr", "0.03",
        "--bs", "10", "--epochs", "1", "--nf", nf(method), "--samples_per_class", str(per_class), "--validation", "1",
        "--dtype", "float64", "--device", "cpu", "--num_threads", "1", "--nowand", "1", "--non_verbose", "1",
        "--results_path", str(results),
    ]  # fmt: skip


@pytest.fixture
def losses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.Tensor]]:
    """Every optimiser step's losses, ``[K]`` (a run alone: ``[1]``; joint's too, which trains at the end). The
    models that stepped and their parameters before their first step are kept in ``STEPPED``."""
    recorded: list[torch.Tensor] = []
    original = ContinualModel.step

    def step(self: ContinualModel, loss: torch.Tensor) -> torch.Tensor:
        if not any(model is self for model, _ in STEPPED):
            STEPPED.append((self, [p.detach().clone() for p in self.net.parameters()]))
        total = original(self, loss)
        recorded.append(total.clone())
        return total

    monkeypatch.setattr(ContinualModel, "step", step)
    threads = torch.get_num_threads()
    yield recorded
    torch.set_num_threads(threads)
    STEPPED.clear()


STEPPED: list[tuple[ContinualModel, list[torch.Tensor]]] = []


def run_alone(flags: list[str]) -> dict:
    """The run alone of ``flags``, checked to train its norm under its model as the reference does (below)."""
    stepped, args = len(STEPPED), parse_args(flags)
    (doc,) = run([args])
    assert len(STEPPED) == stepped + 1, "the run stepped one model"
    check_trained(doc, args)
    return doc


def check_trained(doc: dict, args: Namespace) -> None:
    """The run that ``doc`` reports: its network holds its norm's layers and its parameters moved; every accuracy of
    the last row is a percentage; the task-aware layers (AdaB²N, TBBN) saw every task end and ask for the joint
    forward, and AdaB²N's task weights got gradients; without them a model keeps the forward its flags or its
    reference give."""
    (model, before), n_tasks = STEPPED[-1], len(doc["accuracy_matrix"]["class_il"])
    layer = NORMS.get(args.nl).layer
    assert any(type(m) is layer for m in model.member_net(0).modules()), f"{layer} installed"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters(), strict=True)), "it trained"
    assert all(v is not None and 0.0 <= v <= 100.0 for v in doc["accuracy_matrix"]["class_il"][-1])
    layers = task_aware_layers(model.net)
    assert all(int(layer.tasks_completed) == n_tasks for layer in layers)
    reference = REFERENCE_FORWARD.get(args.model, "separate")
    assert model.forward_mode == (args.forward_mode or ("joint" if layers else reference))
    adab2n = [layer for layer in layers if isinstance(layer, AdaB2N)]
    assert not adab2n or any(layer.task_weight.grad is not None for layer in adab2n), "AdaB2N's task weights learn"


@pytest.mark.parametrize(("model", "method", "k"), CASES)
def test_each_member_is_its_run_alone_or_the_combination_is_refused(
    model: str, method: str, k: int, tmp_path: Path, losses: list[torch.Tensor], capsys
) -> None:
    flags = shared(model, method, PER_CLASS, tmp_path / "stack")
    problem = stacking_problem(parse_args(flags))
    must_refuse = model in RUNS_ALONE or norm_of(method) in NORMS_ALONE
    assert (problem is not None) == must_refuse, problem or f"{model} with {method} stacks, and must not"
    if problem is not None:
        member_flags = [token for member in members(model, method, k) for token in ("--member", member)]
        assert main([*flags, *member_flags]) == 2 and capsys.readouterr().err == f"error: {problem}\n"
        run_alone([*shared(model, method, PER_CLASS, tmp_path / "alone"), *members(model, method, k)[0].split()])
        return  # refused stacked, it still trains alone
    alone_losses, alone_docs = [], []
    for i, member in enumerate(members(model, method, k)):
        doc = run_alone([*shared(model, method, PER_CLASS, tmp_path / "alone"), *member.split()])
        alone_losses.append(torch.cat(losses[:]))
        alone_docs.append(doc)
        losses.clear()
        assert doc["name"] == f"m{i}"
    docs = run(parse_members(flags, members(model, method, k)))
    stacked = torch.stack(losses)  # [steps, K]
    for i, (alone, doc) in enumerate(zip(alone_docs, docs, strict=True)):
        assert torch.equal(stacked[:, i], alone_losses[i]), f"member {i}'s losses"
        assert doc["accuracy_matrix"] == alone["accuracy_matrix"], f"member {i}"
        assert doc["final"] == alone["final"]
        assert doc["parameters_sha256"] == alone["parameters_sha256"], f"member {i}'s trained parameters"
        written = tmp_path / "stack" / "class-il" / "seq-fmnist" / model / f"m{i}.json"
        on_disk = json.loads(written.read_text())
        assert on_disk.keys() == alone.keys()
        assert on_disk["args"] == {**alone["args"], "results_path": str(tmp_path / "stack")}


@pytest.mark.slow
def test_members_get_the_norm_diagnostics_of_their_runs_alone(tmp_path: Path) -> None:
    """``--diagnose_norm 1`` in a stack: each member's running-statistics drift after every task is its run alone's
    (measured on the member as an ordinary network)."""
    flags = [*shared("er_ace", "AdaB2N", 20, tmp_path / "alone"), "--diagnose_norm", "1"]
    two = members("er_ace", "AdaB2N", 2)
    alone = [run([parse_args([*flags, *member.split()])])[0] for member in two]
    stack_flags = [*shared("er_ace", "AdaB2N", 20, tmp_path / "stack"), "--diagnose_norm", "1"]
    stacked = run(parse_members(stack_flags, two))
    for k, (doc, solo) in enumerate(zip(stacked, alone, strict=True)):
        assert len(doc["norm_diagnostics"]) == 5, f"member {k}"
        assert doc["norm_diagnostics"] == solo["norm_diagnostics"], f"member {k}"


def test_the_stated_exceptions_name_registered_components() -> None:
    """A model or norm renamed or removed cannot leave a stale exception that nothing checks."""
    assert set(RUNS_ALONE) <= set(MODELS.names()) and set(NORMS_ALONE) <= set(NORMS.names())
