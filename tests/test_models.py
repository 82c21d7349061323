"""End-to-end runs of every model on a Fashion-MNIST subset, and unit checks of ER-ACE, DER++ and the backbone.

The runs are small (``--nf 8``, 270 training and 30 held-out images per class with ``--validation``, online
``--bs 10 --epochs 1``) and cached per module, so each model trains once; the learning checks stop once the first
task is scored. The held-out split keeps evaluation cheap; 300 images per class give BatchNorm's running statistics
enough steps to be usable in eval mode after the first task.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from normcl.backbone.resnet18 import ResNet18
from normcl.datasets import get_dataset_class
from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.args import parse_args
from normcl.utils.main import run
from normcl.utils.run_setup import build_model
from normcl.utils.training import DEBUG_STEPS
from normcl.utils.wandb_logger import WandbLogger

ALL_MODELS = ("sgd", "joint", "er", "der", "derpp", "er_ace")
REPLAY_MODELS = ("er", "der", "derpp", "er_ace")
COMMON = [
    "--dataset", "seq-fmnist",
    "--lr", "0.01",
    "--bs", "10",
    "--epochs", "1",
    "--nf", "8",
    "--samples_per_class", "300",
    "--validation", "1",
    "--seed", "3",  # seeds 0-5 all gave >= 80 % on task 1 here; 3 is arbitrary
    "--no_task_shuffle", "1",  # task 1 = T-shirt vs trouser for every seed
    "--ignore_other_metrics", "1",
    "--nowand", "1",
    "--non_verbose", "1",
    "--device", "cpu",
    "--num_threads", "1",
]  # fmt: skip

QUICK = ("--samples_per_class", "100")  # 18 steps per task: enough to exercise a run, not to learn
RunFn = Callable[..., tuple[dict[str, Any], Path]]


def model_argv(model: str, *extra: str) -> list[str]:
    """Command line for ``model`` with the shared small settings (and a buffer for replay models)."""
    buffer = ["--buffer_size", "50"] if model in REPLAY_MODELS else []
    return ["--model", model, *buffer, *COMMON, *extra]


@pytest.fixture(scope="module")
def run_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunFn]:
    """``run_model(model, *extra)`` -> (results, results file); each distinct command line runs once."""
    cache: dict[tuple[str, ...], tuple[dict[str, Any], Path]] = {}
    threads = torch.get_num_threads()

    def _run(model: str, *extra: str) -> tuple[dict[str, Any], Path]:
        key = (model, *extra)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"results-{model}")
            argv = [*model_argv(model, *extra), "--results_path", str(out), "--run_name", "run"]
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("NORMCL_OFFLINE", "1")
                (results,) = run([parse_args(argv)])
            cache[key] = (results, out / "class-il" / "seq-fmnist" / model / "run.json")
        return cache[key]

    yield _run
    torch.set_num_threads(threads)


def test_all_models_are_registered():
    assert set(MODELS.names()) >= set(ALL_MODELS)


FLOAT64 = ("--dtype", "float64")
"""The learning checks run in float64: a float32 online run's accuracy depends on the CPU's kernels
(docs/reproducibility.md), float64's rounding stays below what moves an accuracy (``tests/test_golden.py``)."""


class FirstTaskScored(Exception):
    """Raised once the first task is scored: a learning check needs no more of the run."""


def first_task_accuracy(model: str, results: Path, *extra: str) -> float:
    """Class-IL accuracy (%) on the first task after training it, the run stopped there (its logger is told the
    scores, :meth:`WandbLogger.log_task`, then the run goes no further)."""
    scored: list[list[float]] = []

    def log_task(self: WandbLogger, task: int, class_il: list[float], *_: Any) -> None:
        scored.append(class_il)
        raise FirstTaskScored

    argv = [*model_argv(model, *extra), "--results_path", str(results), "--run_name", "run"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMCL_OFFLINE", "1")
        mp.setattr(WandbLogger, "log_task", log_task)
        with pytest.raises(FirstTaskScored):
            run([parse_args(argv)])
    ((accuracy,),) = scored
    return accuracy


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in ALL_MODELS if m != "joint"])
def test_model_learns_first_task(model: str, tmp_path: Path) -> None:
    """Each model trained on its first task (T-shirt against trouser) scores far above chance (50 %) on it; 92-95 %
    measured in float64. Complete runs of every model, their results files and final rows: tests/test_stack_runs.py.
    """
    threads, mode = torch.get_num_threads(), ["--forward_mode", "separate"] if model == "derpp" else []
    try:
        accuracy = first_task_accuracy(model, tmp_path, *FLOAT64, *mode)
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 70


@pytest.mark.slow
def test_joint_learns_all_classes(run_model: RunFn):
    """Joint trains once, after the last task, on all of them: its final row is far above chance (10 %) on the
    whole."""
    results, path = run_model("joint", *FLOAT64)
    assert path.is_file()
    final = results["accuracy_matrix"]["class_il"][-1]
    assert len(final) == 5 and all(v is not None for v in final)
    assert sum(final) / len(final) > 40, final  # 56 % measured in float64
    assert results["final"]["class_il_avg"] == pytest.approx(sum(final) / len(final))


@pytest.mark.parametrize(
    ("model", "alpha", "beta"), [("der", 0.3, 0.0), ("derpp", 0.1, 0.5), ("er_ace", 0.0, 0.0), ("sgd", 0.0, 0.0)]
)
def test_der_losses_are_on_by_default(model: str, alpha: float, beta: float):
    """Without --alpha / --beta the replay terms must not silently vanish (DER would be plain SGD); a model that
    does not declare them records 0, as results files always had."""
    buffer = ["--buffer_size", "50"] if MODELS.get(model).USES_BUFFER else []
    args = parse_args(["--model", model, *buffer, *COMMON])
    assert (args.alpha, args.beta) == (alpha, beta)
    explicit = parse_args(["--model", model, *buffer, "--alpha", "0.7", "--beta", "0.2", *COMMON])
    assert (explicit.alpha, explicit.beta) == (0.7, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["separate", "joint"])
def test_derpp_forward_mode_is_recorded(mode: str, run_model: RunFn):
    results, path = run_model("derpp", "--forward_mode", mode, *QUICK)
    on_disk = json.loads(path.read_text())
    assert on_disk["forward_mode"] == mode
    assert on_disk["args"]["forward_mode"] == mode
    assert results["forward_mode"] == mode


@pytest.mark.slow
def test_same_seed_same_results(run_model: RunFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first, _ = run_model("er", *QUICK)
    monkeypatch.setenv("NORMCL_OFFLINE", "1")
    argv = [*model_argv("er", *QUICK), "--results_path", str(tmp_path), "--run_name", "again"]
    (second,) = run([parse_args(argv)])
    assert second["accuracy_matrix"] == first["accuracy_matrix"]
    assert second["final"] == first["final"]


# ---------------------------------------------------------------- units


@pytest.mark.slow
@pytest.mark.parametrize(("model", "first_task_regularised"), [("er_ace", False), ("derpp", True)])
def test_the_norm_regulariser_joins_only_the_steps_that_replay_as_in_the_reference(
    model: str, first_task_regularised: bool, tmp_path: Path
) -> None:
    """er_ace_ada.py trains its first task without replay on cross-entropy alone, whatever ada_t0 says; derpp_ada.py
    replays from its second step on. At --ada_t0 0 the first task must therefore ignore --lambd with ER-ACE only:
    its losses (the regulariser included) and its row of the accuracy matrix."""
    rows, first_task_losses, losses = [], [], []
    cls = MODELS.get(model)
    observe = cls.observe

    def recording(self: ContinualModel, *args: Any) -> torch.Tensor:
        loss = observe(self, *args)
        losses.append(loss.detach().clone())
        return loss

    for lambd, ada_t0 in (("0", "0"), ("1", "0"), ("1", "1")):
        argv = ["--dataset", "seq-fmnist", "--model", model, "--buffer_size", "50", "--nl", "AdaB2N", "--lambd", lambd]
        argv += ["--ada_t0", ada_t0, "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "8", "--seed", "1"]
        argv += ["--debug_mode", "1", "--eval_batch_size", "500", "--ignore_other_metrics", "1", "--nowand", "1"]
        argv += ["--non_verbose", "1", "--device", "cpu", "--num_threads", "1", "--disable_log", "1"]
        losses.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NORMCL_OFFLINE", "1")
            mp.setattr(cls, "observe", recording)
            rows.append(run([parse_args(argv)])[0]["accuracy_matrix"]["class_il"])
        first_task_losses.append(torch.stack(losses[:DEBUG_STEPS]))  # --debug_mode: DEBUG_STEPS steps a task
    assert torch.equal(first_task_losses[0], first_task_losses[1]) is not first_task_regularised, first_task_losses
    assert (rows[0][0] != rows[1][0]) is first_task_regularised, rows
    assert rows[0][1] != rows[1][1], "from the second task on both regularise"
    assert (rows[1] == rows[2]) is not first_task_regularised, "ER-ACE: --ada_t0 0 and 1 are the same run"
    assert cls.NORM_LOSS_ONLY_WHEN_REPLAYING


def small_model(model: str, *extra: str) -> ContinualModel:
    """A model on seq-fmnist with ``--nf 8``, built without loading any data."""
    args = parse_args(["--model", model, "--buffer_size", "50", *COMMON, *extra])
    args.device = "cpu"
    dataset = get_dataset_class(args.dataset)(args, torch.device("cpu"))
    return build_model([args], [dataset])


def reference_mask(seen: set[int], labels: list[int], n_classes: int) -> tuple[torch.Tensor, set[int]]:
    """Mammoth's ER-ACE rule: present classes, plus every class >= the highest seen unless it is the last one."""
    present = set(labels)
    seen = seen | present
    mask = torch.zeros(n_classes, dtype=torch.bool)
    mask[sorted(present)] = True
    if max(seen) < n_classes - 1:
        mask[max(seen) :] = True
    return mask, seen


def test_er_ace_stream_mask_constructed_example():
    model = small_model("er_ace")
    n = model.n_classes
    assert n == 10

    def classes(mask: torch.Tensor) -> list[int]:
        return torch.nonzero(mask).flatten().tolist()

    steps = [
        # (labels, classes the stream loss may see)
        ([2, 3, 3], [2, 3, 4, 5, 6, 7, 8, 9]),  # max seen 3: present + 3..9
        ([0, 1], [0, 1, 3, 4, 5, 6, 7, 8, 9]),  # max seen still 3
        ([5], [5, 6, 7, 8, 9]),  # max seen 5
        ([8, 0], [0, 8, 9]),  # max seen 8 < 9: class 9 stays open
        ([9, 0], [0, 9]),  # max seen 9 = last class: only the present ones
        ([4], [4]),
    ]
    seen: set[int] = set()
    for labels, expected in steps:
        mask = model._stream_mask(torch.tensor([labels]))[0, 0]  # one member
        ref, seen = reference_mask(seen, labels, n)
        assert classes(mask) == expected, labels
        assert torch.equal(mask.cpu(), ref), labels
        assert classes(model.seen_classes[0]) == sorted(seen)


def test_er_ace_stream_mask_matches_reference_on_random_stream():
    model = small_model("er_ace")
    g = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    high = 2
    for step in range(60):
        high = min(10, 2 + step // 10 * 2)  # classes arrive task by task, as in the stream
        labels = torch.randint(0, high, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
        mask = model._stream_mask(labels[None])[0, 0]
        ref, seen = reference_mask(seen, labels.tolist(), model.n_classes)
        assert torch.equal(mask.cpu(), ref), (step, labels.tolist())
    assert high == 10 and seen == set(range(10))


@pytest.mark.parametrize(("mode", "expected_calls"), [("separate", [10, 10, 10]), ("joint", [30])])
def test_derpp_forward_mode_batches(mode: str, expected_calls: list[int]):
    """DER++ with a non-empty buffer: three passes of 10 (separate) or one concatenated pass of 30 (joint)."""
    model = small_model("derpp", "--forward_mode", mode)
    assert model.forward_mode == mode
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 10, 1, 28, 28), dtype=torch.uint8, generator=g)  # one member's batch
    y = torch.randint(0, 2, (1, 10), generator=g)
    model.observe(model.transform(x), y, x)  # empty buffer: stream only
    calls: list[int] = []
    handle = model.net.inner.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    try:
        loss = model.observe(model.transform(x), y, x)
    finally:
        handle.remove()
    assert calls == expected_calls
    assert torch.isfinite(loss)


class Undriven(ContinualModel):
    """A model that runs its network directly instead of through ``forward_parts``."""

    def observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor) -> torch.Tensor:
        return self.step(self.loss(self.net(inputs), labels))


def test_a_model_that_does_not_drive_the_task_aware_layers_fails_in_its_first_step() -> None:
    args = parse_args(model_argv("sgd", "--nl", "AdaB2N", "--samples_per_class", "20"))
    dataset = get_dataset_class(args.dataset)(args)
    dataset.prepare()
    built = build_model([args], [dataset])
    model = Undriven(built.net, torch.nn.functional.cross_entropy, built.members, dataset)
    data = dataset.task(0)
    x, y = model.transform(data.train_x[None, :10]), data.train_y[None, :10]  # one member's batch
    with pytest.raises(RuntimeError, match=r"^Undriven trains a network with task-aware norm layers \(AdaB2N\) "):
        model.observe(x, y, data.train_x[None, :10])
    plain = build_model([parse_args(model_argv("sgd", "--samples_per_class", "20"))], [dataset])
    Undriven(plain.net, torch.nn.functional.cross_entropy, plain.members, dataset).observe(
        x, y, data.train_x[None, :10]
    )


def resnet18_parameter_count(nf: int, in_channels: int, num_classes: int) -> int:
    """Parameters of ResNet-18 (BasicBlock [2, 2, 2, 2], 3x3 stem, BatchNorm weight + bias, linear head)."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k

    def bn(c: int) -> int:
        return 2 * c

    total = conv(in_channels, nf, 3) + bn(nf)
    planes = nf
    for width in (nf, 2 * nf, 4 * nf, 8 * nf):
        total += conv(planes, width, 3) + bn(width) + 3 * (conv(width, width, 3) + bn(width))
        if planes != width:  # downsampling shortcut: 1x1 conv + BN
            total += conv(planes, width, 1) + bn(width)
        planes = width
    return total + 8 * nf * num_classes + num_classes


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet18_full_width_parameter_count():
    # stem 1,728 + 128; layer1 147,968; layer2 525,568; layer3 2,099,712; layer4 8,393,728; head 5,130
    assert resnet18_parameter_count(64, 3, 10) == 11_173_962
    assert n_parameters(ResNet18(num_classes=10, nf=64, in_channels=3)) == 11_173_962


@pytest.mark.parametrize(("nf", "in_channels", "num_classes"), [(20, 3, 10), (20, 1, 10), (8, 3, 100)])
def test_resnet18_parameter_count_formula(nf: int, in_channels: int, num_classes: int):
    net = ResNet18(num_classes=num_classes, nf=nf, in_channels=in_channels)
    assert n_parameters(net) == resnet18_parameter_count(nf, in_channels, num_classes)


@pytest.mark.parametrize(
    ("shape", "num_classes"), [((1, 28, 28), 10), ((3, 32, 32), 10), ((3, 32, 32), 100), ((3, 84, 84), 100)]
)
def test_resnet18_output_shape(shape: tuple[int, int, int], num_classes: int):
    net = ResNet18(num_classes=num_classes, nf=8, in_channels=shape[0]).eval()
    with torch.no_grad():
        out = net(torch.randn(2, *shape))
        features = net.features(torch.randn(3, *shape))
    assert out.shape == (2, num_classes)
    assert features.shape == (3, 64)  # 8 * nf
    assert torch.isfinite(out).all()
