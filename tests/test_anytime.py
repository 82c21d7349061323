"""Evaluation along the stream (``--eval_every``): AAA, min-ACC and WC-ACC against hand-computed values, and real
runs whose results file holds the anytime curve and whose training it leaves bit for bit unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report import write_run

from normcl.utils.args import parse_args
from normcl.utils.experiments import results_page
from normcl.utils.experiments.report import write_report
from normcl.utils.main import run
from normcl.utils.member_args import parse_members
from normcl.utils.metrics import anytime_metrics, end_accuracy

pytestmark = pytest.mark.slow  # trains for seconds or starts an interpreter with torch (tests/tiers.py)

# A stream of 3 tasks: (step, task, end, class-IL accuracy on each task seen so far).
CURVE = [
    {"step": 2, "task": 0, "end": False, "class_il": [60.0]},
    {"step": 4, "task": 0, "end": True, "class_il": [80.0]},
    {"step": 6, "task": 1, "end": False, "class_il": [40.0, 50.0]},
    {"step": 8, "task": 1, "end": True, "class_il": [70.0, 90.0]},
    {"step": 10, "task": 2, "end": False, "class_il": [65.0, 30.0, 20.0]},
    {"step": 12, "task": 2, "end": True, "class_il": [75.0, 85.0, 95.0]},
]


def test_anytime_metrics_by_hand() -> None:
    m = anytime_metrics(CURVE, 3)
    # AAA: the mean of each point's average over the tasks seen then.
    assert m["aaa"][0] == pytest.approx((60 + 80) / 2)
    assert m["aaa"][1] == pytest.approx((60 + 80 + 45 + 80) / 4)
    assert m["aaa"][2] == pytest.approx((60 + 80 + 45 + 80 + 115 / 3 + 85) / 6)
    # min-ACC: task 0's lowest after its end is 40 (step 6); task 1's after its end is 30 (step 10).
    assert m["min_acc"] == [None, 40.0, pytest.approx((40 + 30) / 2)]
    # WC-ACC: the current task at its end, weighted 1/k, and min-ACC, weighted 1 - 1/k.
    assert m["wc_acc"] == [80.0, pytest.approx(90 / 2 + 40 / 2), pytest.approx(95 / 3 + 35 * 2 / 3)]
    # end-ACC, what min-ACC falls from: tasks 0 and 1 at the ends of their own training, 80 and 90; none before
    # a second task has ended.
    assert end_accuracy(CURVE) == pytest.approx((80 + 90) / 2)
    assert end_accuracy(CURVE[:4]) == 80.0 and end_accuracy(CURVE[:3]) is None
    assert end_accuracy([p for p in CURVE if p["step"] != 4]) is None  # task 0's end is missing


def test_a_task_whose_end_the_curve_does_not_reach_has_no_metrics() -> None:
    stopped = CURVE[:5]  # the run stopped during task 2
    m = anytime_metrics(stopped, 3)
    assert m["aaa"][2] is None and m["min_acc"][2] is None and m["wc_acc"][2] is None
    full = anytime_metrics(CURVE, 3)
    assert all(m[name][:2] == full[name][:2] for name in m)  # a task's metrics look no further than its end


SMALL = [
    "--dataset", "seq-fmnist", "--model", "er_ace", "--buffer_size", "20", "--lr", "0.03", "--bs", "10",
    "--epochs", "1", "--nf", "8", "--samples_per_class", "30", "--validation", "1", "--nowand", "1",
    "--non_verbose", "1", "--device", "cpu", "--num_threads", "1", "--ignore_other_metrics", "1",
]  # fmt: skip
"""Online ER-ACE on 27 training and 3 held-out images per class: 6 steps a task."""


def _run(tmp_path: Path, name: str, *extra: str) -> dict[str, Any]:
    (document,) = run(
        [parse_args([*SMALL, "--seed", "1", *extra, "--results_path", str(tmp_path), "--run_name", name])]
    )
    return document


def test_a_run_records_its_anytime_curve_and_trains_as_without_it(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain")
    document = _run(tmp_path, "anytime", "--eval_every", "4", "--eval_subset", "5")
    assert document["loss_curve"] == plain["loss_curve"]
    assert document["parameters_sha256"] == plain["parameters_sha256"]
    assert document["accuracy_matrix"] == plain["accuracy_matrix"]
    assert plain["anytime"] is None and plain["final"]["aaa"] is None
    curve = document["anytime"]["curve"]
    # every 4th step of the 30, plus each task's end (steps 6, 12, ... 30); the points at a task end are its end.
    steps = [(p["step"], p["task"], p["end"]) for p in curve]
    expected = sorted({(s, (s - 1) // 6, s % 6 == 0) for s in [*range(4, 31, 4), *range(6, 31, 6)]})
    assert steps == expected
    for p in curve:
        assert len(p["class_il"]) == len(p["task_il"]) == p["task"] + 1
        # 5 images a task, 6 of the held-out images per task: accuracies are multiples of 20 %
        assert all(round(a / 20.0, 9).is_integer() for a in p["class_il"])
    for setting in ("class_il", "task_il"):
        metrics = document["anytime"][setting]
        prefix = "" if setting == "class_il" else "task_il_"
        for name in ("aaa", "min_acc", "wc_acc"):
            assert len(metrics[name]) == 5
            assert document["final"][prefix + name] == metrics[name][-1]
    assert document["args"]["eval_every"] == 4 and document["args"]["eval_subset"] == 5


def test_every_member_of_a_stack_records_the_curve_of_its_run_alone(tmp_path: Path) -> None:
    extra = ["--eval_every", "5", "--eval_subset", "4", "--dtype", "float64"]  # stacked = alone exactly in float64
    members = [f"--seed {seed} --run_name s{seed}" for seed in (1, 2)]
    stacked = run(parse_members([*SMALL, *extra, "--results_path", str(tmp_path)], members))
    alone = _run(tmp_path / "alone", "s1", *extra)  # seed 1
    assert stacked[0]["anytime"] == alone["anytime"]
    assert stacked[0]["anytime"]["curve"] != stacked[1]["anytime"]["curve"]  # seeds 1 and 2: other images, orders


def _with_curve(path: Path, shift: float) -> None:
    """Give a results file the anytime curve ``CURVE`` shifted by ``shift`` points, with its metrics."""
    doc = json.loads(path.read_text())
    curve = [{**p, "class_il": [a + shift for a in p["class_il"]], "task_il": p["class_il"]} for p in CURVE]
    metrics = {s: anytime_metrics(curve, 3, s) for s in ("class_il", "task_il")}
    doc["anytime"] = {"curve": curve, **metrics}
    doc["final"] |= {name: values[-1] for name, values in metrics["class_il"].items()}
    doc["args"] |= {"eval_every": 2, "eval_subset": 100}
    path.write_text(json.dumps(doc))


def test_the_report_tabulates_the_stream_metrics_and_their_paired_gains(tmp_path: Path) -> None:
    for seed in range(3):
        _with_curve(write_run(tmp_path, f"bn{seed}", final=60.0 + seed, seed=seed), shift=seed)
        _with_curve(write_run(tmp_path, f"cn{seed}", final=62.0 + seed, seed=seed, nl="CN"), shift=seed + 5)
    files = write_report(tmp_path, tmp_path / "report")
    text = files.markdown.read_text()
    aaa = anytime_metrics(CURVE, 3)["aaa"][-1]
    assert f"| BN | {aaa + 1:.2f} ± 1.00 (3) |" in text  # shifts 0, 1, 2 over the seeds
    assert f"| CN | {aaa + 6:.2f} ± 1.00 (3) |" in text
    # The same gain on every seed: no spread (d_z undefined), and the exact sign-flip p of 3 seeds, 2 / 2³.
    assert "| CN − BN | final class-IL | 3 | 1 | 0 | +2.00 | [+2.00, +2.00] | 0.250 | – |" in text
    for metric in ("AAA", "min-ACC", "WC-ACC"):
        assert f"| CN − BN | {metric} | 3 | 1 | 0 | +5.00 | [+5.00, +5.00] | 0.250 | – |" in text
    end_acc = text.split("### end-ACC")[1].split("###")[0]  # described, not compared: not in the gains
    assert "| BN | 86.00 ± 1.00 (3) |" in end_acc and "| CN | 91.00 ± 1.00 (3) |" in end_acc  # 85 + the shifts
    assert "end-ACC |" not in text
    assert (tmp_path / "report" / "stream_accuracy__seq-fmnist_er_ace_200.png").is_file()
    page = results_page.render(tmp_path, tmp_path / "report", tmp_path / "results.md", "python run.py")
    assert "](report/stream_accuracy__seq-fmnist_er_ace_200.png)" in page  # the results page shows the figure


def test_a_report_without_anytime_curves_has_no_stream_section(tmp_path: Path) -> None:
    write_run(tmp_path, "bn", final=60.0)
    files = write_report(tmp_path, tmp_path / "report")
    assert "during the stream" not in files.text
    assert not list((tmp_path / "report").glob("stream_accuracy__*"))
