"""AdaB²N inside Avalanche's own strategies (issue 17): ``TaskAwareNormPlugin`` against the real ``avalanche-lib``.

The stream is this project's Split Fashion-MNIST (20 training images per class) as an Avalanche class-incremental
benchmark. One ER-ACE run over the five experiences, in float64, is recorded at the first iteration of the third
experience (a stream forward, then a separate forward of a buffer batch that mixes three tasks) and compared with
this framework's own ``ErAce`` on the same samples, state and task indices.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

pytest.importorskip("avalanche", minversion="0.6")

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.core import SupervisedPlugin
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin

from normcl.backbone.resnet18 import ResNet18
from normcl.datasets import get_dataset_class
from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.integrations.avalanche import TaskAwareNormPlugin, avalanche_benchmark
from normcl.models.er_ace import ErAce
from normcl.models.utils.adab2n import AdaB2N
from normcl.models.utils.members import Members
from normcl.models.utils.norms import convert_norm
from normcl.models.utils.stacking import StackedNet
from normcl.utils.args import parse_args

pytestmark = [  # Avalanche's notice, and the plugin's (asserted once)
    pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning"),
    pytest.mark.filterwarnings("ignore:TaskAwareNormPlugin. ER_ACE runs stream and replay:UserWarning"),
]

SNAPSHOT_TASK = 2
"""The experience whose first iteration is compared with the framework: its buffer batch holds tasks 0, 1 and 2."""


@pytest.fixture(scope="module")
def fmnist() -> ContinualDataset:
    dataset = get_dataset_class("seq-fmnist")(Namespace(samples_per_class=20), "cpu")
    dataset.prepare()
    return dataset


@pytest.fixture(scope="module")
def class_task(fmnist: ContinualDataset) -> dict[int, int]:
    """The dataset's own class -> task map, against which the plugin's task ids are checked."""
    return {c: t for t in range(fmnist.N_TASKS) for c in range(*fmnist.task_classes(t))}


def expected_tasks(labels: Tensor, class_task: dict[int, int]) -> Tensor:
    return torch.tensor([class_task[int(c)] for c in labels])


def adab2n_net(dtype: torch.dtype = torch.float32) -> nn.Module:
    return convert_norm(ResNet18(10, nf=8, in_channels=1), "AdaB2N", num_tasks=5, kappa=0.4, lambd=0.1).to(dtype)


def strategy(cls: type, net: nn.Module, plugins: list[SupervisedPlugin], **kwargs: Any) -> Any:
    return cls(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.03),
        train_mb_size=10,
        eval_mb_size=50,
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
        **kwargs,
    )


def adab2n_layers(net: nn.Module) -> list[AdaB2N]:
    return [m for m in net.modules() if isinstance(m, AdaB2N)]


def record_tasks(net: nn.Module, plugin: TaskAwareNormPlugin) -> list[tuple[int, Tensor]]:
    """What the first AdaB²N layer receives, per training forward: (the task being trained, the task ids)."""
    received: list[tuple[int, Tensor]] = []
    first = adab2n_layers(net)[0]
    hand_on = first.set_batch_tasks

    def spy(task_ids: Tensor | None, counts: Tensor | None = None, stream: int | None = None) -> None:
        assert task_ids is not None and stream is None
        received.append((plugin.current_task, task_ids.clone()))
        hand_on(task_ids, counts, stream)

    first.set_batch_tasks = spy  # type: ignore[method-assign]
    return received


class Recorder(SupervisedPlugin):
    """Records what the compared iteration sees; listed before the plugin, so it reads the regulariser first."""

    def __init__(self, plugin: TaskAwareNormPlugin) -> None:
        super().__init__()
        self.plugin = plugin
        self.regularisers: list[tuple[int, Tensor | None]] = []
        self.snapshot: dict[str, Any] = {}

    def _compared(self, strategy: Any) -> bool:
        return self.plugin.current_task == SNAPSHOT_TASK and strategy.clock.train_exp_iterations == 0

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._compared(strategy):
            net = adab2n_net(torch.float64)
            net.load_state_dict(strategy.model.state_dict())  # the state before this iteration's forwards
            self.snapshot.update(net=net.train(), x=strategy.mb_x, y=strategy.mb_y)
            self.snapshot.update(buffer_x=strategy.mb_buffer_x, buffer_y=strategy.mb_buffer_y)

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._compared(strategy):
            self.snapshot["outputs"] = (strategy.mb_output.detach().clone(), strategy.mb_buffer_out.detach().clone())
            layers = adab2n_layers(strategy.model)
            self.snapshot["stats"] = [(m.running_mean.clone(), m.running_var.clone(), m.eta.clone()) for m in layers]

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        term = self.plugin.regulariser()
        self.regularisers.append((self.plugin.current_task, None if term is None else term.detach().clone()))
        if self._compared(strategy):
            self.snapshot["regulariser"] = term.detach().clone()


@pytest.fixture(scope="module")
def er_ace_run(fmnist: ContinualDataset) -> dict[str, Any]:
    """ER-ACE over the whole stream in float64, with the task ids the first layer receives recorded."""
    torch.manual_seed(0)
    benchmark = avalanche_benchmark(fmnist, test_samples_per_class=5, dtype=torch.float64)
    net = adab2n_net(torch.float64)
    plugin = TaskAwareNormPlugin()
    recorder = Recorder(plugin)
    received = record_tasks(net, plugin)
    cl = strategy(ER_ACE, net, [recorder, plugin], mem_size=50, batch_size_mem=10)
    with pytest.warns(UserWarning, match="separate forwards"):
        for experience in benchmark.train_stream:
            cl.train(experience, eval_streams=[])
    return {"net": net, "plugin": plugin, "recorder": recorder, "received": received, "benchmark": benchmark}


@pytest.mark.slow
def test_layers_receive_each_samples_first_experience(er_ace_run: dict[str, Any], class_task: dict[int, int]) -> None:
    snap, received = er_ace_run["recorder"].snapshot, er_ace_run["received"]
    at_snapshot = [ids for task, ids in received if task == SNAPSHOT_TASK]
    stream_ids, buffer_ids = at_snapshot[0], at_snapshot[1]  # ER-ACE: the stream forward, then the buffer's
    assert torch.equal(stream_ids, expected_tasks(snap["y"], class_task))
    assert torch.equal(stream_ids, torch.full_like(stream_ids, SNAPSHOT_TASK))
    assert torch.equal(buffer_ids, expected_tasks(snap["buffer_y"], class_task))
    assert len(set(buffer_ids.tolist())) >= 2, "the buffer batch should mix tasks"
    assert er_ace_run["plugin"].class_tasks == class_task
    for task, ids in received:  # every training forward of the run: no sample of a later task
        assert int(ids.max()) <= task


def test_statistics_and_outputs_equal_the_frameworks_model(
    er_ace_run: dict[str, Any], fmnist: ContinualDataset
) -> None:
    snap = er_ace_run["recorder"].snapshot
    argv = ["--dataset", "seq-fmnist", "--model", "er_ace", "--nl", "AdaB2N", "--buffer_size", "50", "--lr", "0.03"]
    args = parse_args([*argv, "--bs", "10", "--forward_mode", "separate", "--dtype", "float64"])
    members = Members([args], [torch.Generator()])  # a run alone: one member
    model = ErAce(StackedNet([snap["net"]]), F.cross_entropy, members, fmnist)
    model.current_task = SNAPSHOT_TASK
    buffer_tasks = torch.tensor([int(y) // fmnist.N_CLASSES_PER_TASK for y in snap["buffer_y"]])
    outputs = model.forward_parts([(snap["x"][None], SNAPSHOT_TASK), (snap["buffer_x"][None], buffer_tasks[None])])
    for ours, theirs in zip(outputs, snap["outputs"], strict=True):
        assert ours.dtype == torch.float64
        assert (ours[0] - theirs).abs().max() <= 1e-12
    layers = adab2n_layers(model.net)
    assert len(layers) == len(snap["stats"]) == 20
    for layer, (mean, var, eta) in zip(layers, snap["stats"], strict=True):
        assert (layer.running_mean - mean).abs().max() <= 1e-12
        assert (layer.running_var - var).abs().max() <= 1e-12
        assert torch.equal(layer.eta, eta)
    expected = model.regularised(torch.zeros((), dtype=torch.float64))
    assert expected > 0
    assert (expected - snap["regulariser"]).abs() <= 1e-12


def test_after_the_stream_the_layers_counted_every_experience(er_ace_run: dict[str, Any]) -> None:
    layers = adab2n_layers(er_ace_run["net"])
    experiences = len(er_ace_run["benchmark"].train_stream)
    assert er_ace_run["plugin"].current_task == experiences == 5
    for layer in layers:
        assert int(layer.tasks_completed) == experiences
        assert layer.task_weight.grad is not None and layer.task_weight.grad.abs().sum() > 0
        assert layer.task_weight.detach().abs().sum() > 0  # trained by the strategy's optimiser
    regularisers = er_ace_run["recorder"].regularisers  # ER-ACE's reference: from its first replay (task 1) on
    assert all((term is None) == (task == 0) for task, term in regularisers)
    assert all(term > 0 for task, term in regularisers if task > 0)


@pytest.mark.parametrize("cls", [DER, Naive])
def test_joint_and_plain_strategies_hand_on_the_tasks(
    cls: type, fmnist: ContinualDataset, class_task: dict[int, int]
) -> None:
    """DER concatenates replay and stream in one forward (the reference AdaB²N's joint batch); Naive never replays."""
    torch.manual_seed(0)
    benchmark = avalanche_benchmark(fmnist, test_samples_per_class=5)
    net, plugin = adab2n_net(), TaskAwareNormPlugin()
    received, labels = record_tasks(net, plugin), []

    class Labels(SupervisedPlugin):
        def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            labels.append(strategy.mb_y.clone())  # DER: the buffer's samples, then the stream's

    kwargs = {"mem_size": 50, "batch_size_mem": 10, "alpha": 0.3, "beta": 0.0} if cls is DER else {}
    cl = strategy(cls, net, [plugin, Labels()], eval_every=1, **kwargs)  # evaluation forwards within training too
    for experience in list(benchmark.train_stream)[:3]:
        cl.train(experience, eval_streams=[benchmark.test_stream[:1]])
    assert len(received) == len(labels) == 3 * 40 // 10  # one forward per batch of 10, 40 images per experience
    assert all(torch.equal(ids, expected_tasks(y, class_task)) for (_, ids), y in zip(received, labels, strict=True))
    mixed = [ids for _, ids in received if len(set(ids.tolist())) > 1]
    assert bool(mixed) == (cls is DER)
    assert all(int(layer.tasks_completed) == 3 for layer in adab2n_layers(net))


@pytest.mark.parametrize(
    ("cls", "only_when_replaying", "schedule"),
    [
        (ER_ACE, None, "replay"),
        (DER, None, "after_first"),
        (Naive, None, "always"),
        (DER, True, "replay"),
        (ER_ACE, False, "always"),
    ],
)
def test_the_regulariser_follows_the_strategys_reference_model(
    cls: type, only_when_replaying: bool | None, schedule: str, fmnist: ContinualDataset
) -> None:
    """By default the iterations of the reference AdaB²N model: ER-ACE's (``er_ace_ada.py``) from its first replay,
    the second experience; DER++'s (``derpp_ada.py``) from its second step, whose buffer is not empty, though
    Avalanche's DER, which fills its buffer after each experience, replays nothing in the first; the others' in every
    iteration. ``only_when_replaying=True``: in iterations with a replay part (DER's from the second experience)."""
    torch.manual_seed(0)
    benchmark = avalanche_benchmark(fmnist, test_samples_per_class=5)
    plugin = TaskAwareNormPlugin(only_when_replaying=only_when_replaying)
    recorder, batches = Recorder(plugin), []

    class Batches(SupervisedPlugin):
        def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            batches.append((plugin.current_task, len(strategy.mb_x)))

    kwargs = {"mem_size": 50, "batch_size_mem": 10} | ({"alpha": 0.3, "beta": 0.0} if cls is DER else {})
    cl = strategy(cls, adab2n_net(), [recorder, plugin, Batches()], **({} if cls is Naive else kwargs))
    for experience in list(benchmark.train_stream)[:2]:
        cl.train(experience, eval_streams=[])
    assert plugin.schedule == schedule
    added = [term is not None for _, term in recorder.regularisers]
    first = sum(task == 0 for task, _ in recorder.regularisers)
    assert len(added) == 8 and first == 4  # 40 images per experience, batches of 10
    expected = {"replay": [False] * 4 + [True] * 4, "after_first": [False] + [True] * 7, "always": [True] * 8}
    assert added == expected[schedule]
    if cls is DER:  # Avalanche's DER: the stream batch alone in the first experience, replay in its head after it
        assert [size for _, size in batches] == [10] * 4 + [20] * 4


def test_a_copy_of_the_model_is_left_alone(fmnist: ContinualDataset) -> None:
    """A deep copy taken mid-training (LwF's teacher, a snapshot) neither copies the strategy nor drives the plugin."""
    benchmark = avalanche_benchmark(fmnist, test_samples_per_class=5)
    plugin = TaskAwareNormPlugin()
    twins: list[nn.Module] = []

    class Copier(SupervisedPlugin):
        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            if not twins:
                twins.append(copy.deepcopy(strategy.model).train())
                twins[0](torch.randn(4, 1, 28, 28)).sum().backward()  # not the strategy's inputs: left alone

    cl = strategy(Naive, adab2n_net(), [plugin, Copier()])
    cl.train(benchmark.train_stream[0], eval_streams=[])
    assert twins and plugin.current_task == 1
    assert all(int(layer.tasks_completed) == 0 for layer in adab2n_layers(twins[0]))
    hooks = [*twins[0]._forward_pre_hooks.values(), *twins[0]._forward_hooks.values()]
    assert hooks and not any(hasattr(h.fn, "__self__") for h in hooks)  # no bound method of the plugin
    torch.save(twins[0], io.BytesIO())  # the copy holds no reference to the strategy (unpicklable as a whole)


def test_an_unknown_norm_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown normalization layer 'AdaBN'; choose one of: AdaB2N, BN"):
        convert_norm(ResNet18(10, nf=8, in_channels=1), "AdaBN", num_tasks=5)


def test_the_plugin_needs_a_task_aware_layer(fmnist: ContinualDataset) -> None:
    benchmark = avalanche_benchmark(fmnist, test_samples_per_class=5)
    net = convert_norm(ResNet18(10, nf=8, in_channels=1), "GN")
    cl = strategy(Naive, net, [TaskAwareNormPlugin()])
    with pytest.raises(ValueError, match=r"no task-aware norm layer; convert it first, e\.g\. convert_norm"):
        cl.train(benchmark.train_stream[0], eval_streams=[])


def test_tbbn_trains_the_first_experience_and_refuses_the_next_without_the_stream_size(
    fmnist: ContinualDataset,
) -> None:
    """The plugin cannot say which samples are the stream's, which TBBN needs from its second task on."""
    stream = avalanche_benchmark(fmnist, test_samples_per_class=5).train_stream
    cl = strategy(Naive, convert_norm(ResNet18(10, nf=8, in_channels=1), "TBBN"), [TaskAwareNormPlugin()])
    cl.train(stream[0], eval_streams=[])
    with pytest.raises(ValueError, match=r"^TBBN: a training forward after the first task needs the stream batch"):
        cl.train(stream[1], eval_streams=[])


def test_classes_that_reappear_are_refused(fmnist: ContinualDataset) -> None:
    """A stream of plain datasets (no classes timeline: the classes come from the targets) repeating class 0/1."""
    stream = avalanche_benchmark(fmnist, test_samples_per_class=5).train_stream
    blurry = benchmark_from_datasets(train=[stream[0].dataset, stream[1].dataset.concat(stream[0].dataset)])
    cl = strategy(Naive, adab2n_net(), [TaskAwareNormPlugin()])
    cl.train(blurry.train_stream[0], eval_streams=[])
    with pytest.raises(ValueError, match=r"classes \[0, 1\] of task 1 were already seen in task\(s\) \[0\]"):
        cl.train(blurry.train_stream[1], eval_streams=[])


def test_more_experiences_than_num_tasks_and_unknown_classes_are_refused(fmnist: ContinualDataset) -> None:
    stream = avalanche_benchmark(fmnist, test_samples_per_class=5).train_stream
    net = convert_norm(ResNet18(10, nf=8, in_channels=1), "AdaB2N", num_tasks=1)
    plugin = TaskAwareNormPlugin()
    cl = strategy(Naive, net, [plugin])
    cl.train(stream[0], eval_streams=[])
    with pytest.raises(ValueError, match=r"the batch holds classes \[2, 9\] of no experience trained so far"):
        plugin.task_ids(torch.tensor([0, 2, 9, 1]))
    with pytest.raises(ValueError, match=r"experience 2 is task 1, but the layers were built for num_tasks=1"):
        cl.train(stream[1], eval_streams=[])


def test_a_training_forward_of_other_inputs_is_refused(fmnist: ContinualDataset) -> None:
    """As GEM's reference gradients would: their classes, hence their tasks, are unknown to the plugin."""

    class Probe(SupervisedPlugin):
        def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            strategy.model(torch.randn(4, 1, 28, 28))

    cl = strategy(Naive, adab2n_net(), [TaskAwareNormPlugin(), Probe()])
    with pytest.raises(ValueError, match=r"got inputs that are neither strategy\.mb_x nor strategy\.mb_buffer_x"):
        cl.train(avalanche_benchmark(fmnist, test_samples_per_class=5).train_stream[0], eval_streams=[])


@pytest.mark.slow
def test_the_example_runs_from_anywhere_and_ends_with_its_summary(tmp_path: Path) -> None:
    """``python examples/avalanche_adab2n.py`` from another folder: it imports the installed package ``normcl``."""
    example = Path(__file__).resolve().parent.parent / "examples" / "avalanche_adab2n.py"
    argv = ["--strategy", "der", "--samples_per_class", "4", "--test_samples_per_class", "2", "--nf", "4"]
    proc = subprocess.run(
        [sys.executable, str(example), *argv, "--buffer_size", "200", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Top1_Acc_Stream/eval_phase/test_stream" in proc.stdout  # Avalanche's own metrics
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["strategy"] == "der" and summary["adab2n_layers"] == 20 and summary["tasks_completed"] == 5
    assert 0.0 <= summary["accuracy"] <= 100.0 and len(summary["accuracy_per_experience"]) == 5
