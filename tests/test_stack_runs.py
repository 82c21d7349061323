"""A stacked run's member is the same run as alone (issue 14): float64, every norm with ER-ACE and DER++, and
AdaB²N with SGD, ER and DER.

Four members with different seeds, learning rates and norm or model options train as one stack; each must give
the per-step losses (within 1e-9 relative: float64 rounding, as the members' sums run in another order) and the
accuracy matrices (exactly) of its run alone, and its results file under the name and in the schema it would have
alone. Runs are small: ``--nf 4`` (8 for the group norms), 20 images per class, a validation split as test set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models import MODELS
from utils.args import parse_args, parse_members
from utils.main import run
from utils.stack_training import run_stack

SEEDS_AND_RATES = ["--seed 0", "--seed 1 --lr 0.05", "--seed 2", "--seed 1 --lr 0.01"]
ADAB2N = [
    "--kappa 0.4 --lambd 0.1 --ada_t0 0",
    "--kappa 1.0 --lambd 1 --ada_t0 1",
    "--kappa 0.0 --lambd 0.01",
    "--kappa 0.7",
]
DERPP = ["", "--alpha 0.3", "--beta 1.0", "--alpha 0.05 --beta 0.2"]
DER = ["", "--alpha 0.3", "", "--alpha 0.05"]


def members(model: str, norm: str) -> list[str]:
    """Four members: other seeds and learning rates, and other options of the norm and model where they have some."""
    flags = [f"{base} --run_name m{k}" for k, base in enumerate(SEEDS_AND_RATES)]
    if norm.startswith("AdaB2N"):
        flags = [f"{f} {o}" for f, o in zip(flags, ADAB2N, strict=True)]
    if model in ("der", "derpp"):
        flags = [f"{f} {o}" for f, o in zip(flags, DER if model == "der" else DERPP, strict=True)]
    return flags


NORMS = ["BN", "GN", "LN", "IN", "CN --no_affine 1", "BRN", "AdaB2N", "AdaB2N --adab2n_renorm 1"]
CASES = [(model, norm) for model in ("er_ace", "derpp") for norm in NORMS] + [("er_ace", "BN --forward_mode joint")]
CASES += [(model, "AdaB2N") for model in ("sgd", "er", "der")]  # the other stackable models, with the hardest norm


def nf(norm: str) -> str:
    """``--nf 4``, except for the group norms: at 4 every group is one channel (32 groups at most), at 8 the last
    stage has two channels a group, so a stacked group that mixed members' or channels' order would show."""
    return "8" if norm.split()[0] in ("GN", "CN") else "4"


def shared(model: str, norm: str, results: Path) -> list[str]:
    return [
        "--dataset", "seq-fmnist", "--model", model, "--buffer_size", "50", "--nl", *norm.split(), "--lr", "0.03",
        "--bs", "10", "--epochs", "1", "--nf", nf(norm), "--samples_per_class", "20", "--validation", "1",
        "--dtype", "float64", "--device", "cpu", "--num_threads", "1", "--nowand", "1", "--non_verbose", "1",
        "--results_path", str(results),
    ]  # fmt: skip


@pytest.fixture
def losses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.Tensor]]:
    """Every step's loss (a scalar alone, ``[K]`` in a stack), as the models' ``observe`` returns it."""
    recorded: list[torch.Tensor] = []
    for name in ("sgd", "er", "der", "derpp", "er_ace"):
        cls = MODELS.get(name)
        original = cls.observe

        def observe(self, *args, original=original):
            loss = original(self, *args)
            recorded.append(loss.detach().clone())
            return loss

        monkeypatch.setattr(cls, "observe", observe)
    threads = torch.get_num_threads()
    yield recorded
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("model", "norm"), CASES)
def test_each_member_is_its_run_alone(model: str, norm: str, tmp_path: Path, losses: list[torch.Tensor]) -> None:
    alone_losses, alone_docs = [], []
    for k, member in enumerate(members(model, norm)):
        doc = run(parse_args([*shared(model, norm, tmp_path / "alone"), *member.split()]))
        alone_losses.append(torch.stack(losses[:]))
        alone_docs.append(doc)
        losses.clear()
        assert doc["name"] == f"m{k}"
    docs = run_stack(parse_members(shared(model, norm, tmp_path / "stack"), members(model, norm)))
    stacked = torch.stack(losses)  # [steps, K]
    for k, (alone, doc) in enumerate(zip(alone_docs, docs, strict=True)):
        torch.testing.assert_close(stacked[:, k], alone_losses[k], rtol=1e-9, atol=1e-12, msg=f"member {k}'s losses")
        assert doc["accuracy_matrix"] == alone["accuracy_matrix"], f"member {k}"
        assert doc["final"] == alone["final"]
        written = tmp_path / "stack" / "class-il" / "seq-fmnist" / model / f"m{k}.json"
        on_disk = json.loads(written.read_text())
        assert on_disk.keys() == alone.keys()
        assert on_disk["args"] == {**alone["args"], "results_path": str(tmp_path / "stack")}


def test_members_get_the_norm_diagnostics_of_their_runs_alone(tmp_path: Path) -> None:
    """``--diagnose_norm 1`` in a stack: each member's running-statistics drift after every task is its run alone's
    (measured on the member as an ordinary network)."""
    flags = [*shared("er_ace", "AdaB2N", tmp_path / "alone"), "--diagnose_norm", "1"]
    two = members("er_ace", "AdaB2N")[:2]
    alone = [run(parse_args([*flags, *member.split()])) for member in two]
    stacked = run_stack(parse_members([*shared("er_ace", "AdaB2N", tmp_path / "stack"), "--diagnose_norm", "1"], two))
    for k, (doc, solo) in enumerate(zip(stacked, alone, strict=True)):
        assert len(doc["norm_diagnostics"]) == 5, f"member {k}"
        assert doc["norm_diagnostics"] == solo["norm_diagnostics"], f"member {k}"
