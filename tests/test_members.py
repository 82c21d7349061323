"""A model sees only what its members share, and a stack of one is the run (issue 36).

``self.args`` of a model holds the arguments every member gives alike and its own options as ``[K]`` tensors; a value
the members differ in (the learning rate, the seed) is refused when read, in one line, never member 0's for all. A
model written as mammoth models are, reading ``self.args.lr``, is exact against its runs alone where its members
share the learning rate and refused where they do not. One ``--member`` is the run without ``--member``, for every
registered model (``joint`` included, which cannot stack several).
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiers import slow_but
from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.models.utils.members import Members
from normcl.utils.core.errors import UserError
from normcl.utils.main import main

SMALL = [
    "--dataset", "seq-fmnist", "--buffer_size", "50", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "4",
    "--samples_per_class", "10", "--validation", "1", "--dtype", "float64", "--device", "cpu", "--num_threads", "1",
    "--nowand", "1", "--non_verbose", "1",
]  # fmt: skip


class LrReader(ContinualModel):
    """SGD whose loss is scaled by its learning rate against a reference of 0.03, as a schedule reads it: a model
    that reads ``self.args.lr`` (one number)."""

    STACKS = True

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        (outputs,) = self.forward_parts([(inputs, self.current_task)])
        return self.step(self.loss(outputs, labels) * (self.args.lr / 0.03))


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    MODELS.names()
    monkeypatch.setitem(MODELS._items, "lr_reader", LrReader)
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def results(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


def test_the_shared_arguments_hold_what_every_member_gives_alike_and_refuse_the_rest() -> None:
    members = Members([Namespace(lr=0.1, seed=0, nf=4), Namespace(lr=0.03, seed=1, nf=4)], [])
    shared = members.shared()
    assert shared.nf == 4 and vars(shared) == {"nf": 4}
    for name, shown in (("lr", "0.1, 0.03"), ("seed", "0, 1")):
        with pytest.raises(UserError) as refused:
            getattr(shared, name)
        message = str(refused.value)
        assert "\n" not in message and f"differ in --{name} ({shown})" in message
        assert f"self.members.args[k].{name}" in message and f"the same --{name}" in message
    with pytest.raises(AttributeError):
        shared.not_an_argument  # noqa: B018
    alone = Members([Namespace(lr=0.1, seed=0)], []).shared()
    assert (alone.lr, alone.seed) == (0.1, 0)


def test_a_model_that_reads_the_learning_rate_is_refused_where_its_members_differ_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*SMALL, "--model", "lr_reader", "--results_path", str(tmp_path)]
    members = ["--member", "--seed 0 --lr 0.1 --run_name a", "--member", "--seed 1 --lr 0.03 --run_name b"]
    assert main([*flags, *members]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the stacked members differ in --lr (0.1, 0.03)") and err.count("\n") == 1, err
    assert results(tmp_path) == {}, "nothing written"


@pytest.mark.slow
def test_a_model_that_reads_the_learning_rate_is_exact_where_its_members_share_it(tmp_path: Path) -> None:
    flags = [*SMALL, "--model", "lr_reader", "--lr", "0.1"]
    own = {"a": "--seed 0 --run_name a", "b": "--seed 1 --run_name b"}
    members = [token for flags in own.values() for token in ("--member", flags)]
    assert main([*flags, "--results_path", str(tmp_path / "stack"), *members]) == 0
    for member in own.values():
        assert main([*flags, "--results_path", str(tmp_path / "alone"), *member.split()]) == 0
    stacked, alone = results(tmp_path / "stack"), results(tmp_path / "alone")
    assert sorted(stacked) == sorted(alone) == ["a.json", "b.json"]
    for name in stacked:
        for key in ("accuracy_matrix", "loss_curve", "parameters_sha256"):
            assert stacked[name][key] == alone[name][key], (name, key)


@pytest.mark.parametrize("model", slow_but(sorted(set(MODELS.names()) - {"lr_reader"}), {"er_ace"}))
def test_one_member_is_the_run_without_member(model: str, tmp_path: Path) -> None:
    """``--model joint --member "--seed 0"`` (a model that cannot stack several members) as every other model: one
    member trains and writes exactly what the same flags do without ``--member``."""
    flags = [*SMALL, "--model", model, "--nl", "BN"]
    assert main([*flags, "--results_path", str(tmp_path / "member"), "--member", "--seed 0 --run_name r"]) == 0
    assert main([*flags, "--results_path", str(tmp_path / "alone"), "--seed", "0", "--run_name", "r"]) == 0
    (member,), (alone,) = results(tmp_path / "member").values(), results(tmp_path / "alone").values()
    for key in ("accuracy_matrix", "loss_curve", "parameters_sha256", "final", "forward_mode"):
        assert member[key] == alone[key], key
    assert member["args"] == {**alone["args"], "results_path": str(tmp_path / "member")}
