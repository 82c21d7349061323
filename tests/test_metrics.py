"""Tests of the continual-learning metrics on hand-made accuracy matrices with known answers."""

import pytest

from normcl.utils.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer

# acc[i][j]: accuracy on task j after training task i. None = not measured; the superdiagonal
# acc[j-1][j] is task j just before it is trained (only forward transfer reads it).
ACC = [
    [90.0, 99.0, None, None],
    [70.0, 80.0, 20.0, None],
    [60.0, 85.0, 60.0, 30.0],
    [65.0, 50.0, 70.0, 95.0],
]
RANDOM = [10.0, 12.0, 15.0, 20.0]


def test_average_accuracy_is_mean_of_last_row():
    # (65 + 50 + 70 + 95) / 4 = 280 / 4
    assert average_accuracy(ACC) == pytest.approx(70.0)


def test_average_accuracy_uses_only_seen_tasks_of_last_row():
    # after task 2 of 4: (60 + 85 + 60) / 3; the superdiagonal 30 is not a seen task
    assert average_accuracy(ACC[:3]) == pytest.approx(205.0 / 3)


def test_forgetting_max_over_rows_after_training_including_final_row():
    # task 0: max(90, 70, 60, 65) - 65 = 25
    # task 1: max(80, 85, 50) - 50 = 35   (the superdiagonal 99 is before training: excluded)
    # task 2: max(60, 70) - 70 = 0        (the final row is included, so never negative)
    # mean = 60 / 3 = 20
    assert forgetting(ACC) == pytest.approx(20.0)


def test_forgetting_on_prefix_matrix():
    # after task 1 of 4 (rows 0..1): task 0: max(90, 70) - 70 = 20
    assert forgetting([row[:2] for row in ACC[:2]]) == pytest.approx(20.0)


def test_backward_transfer():
    # (65 - 90) + (50 - 80) + (70 - 60) = -25 - 30 + 10 = -45; / 3 = -15
    assert backward_transfer(ACC) == pytest.approx(-15.0)


def test_forward_transfer():
    # superdiagonal minus random accuracy on the same task (task 0 has none):
    # (99 - 12) + (20 - 15) + (30 - 20) = 87 + 5 + 10 = 102; / 3 = 34
    assert forward_transfer(ACC, RANDOM) == pytest.approx(34.0)


def test_three_by_three_matrix():
    acc = [
        [50.0, 40.0, None],
        [30.0, 90.0, 10.0],
        [40.0, 60.0, 80.0],
    ]
    random = [0.0, 20.0, 5.0]
    assert average_accuracy(acc) == pytest.approx(60.0)  # (40 + 60 + 80) / 3
    assert forgetting(acc) == pytest.approx(20.0)  # ((50 - 40) + (90 - 60)) / 2
    assert backward_transfer(acc) == pytest.approx(-20.0)  # ((40 - 50) + (60 - 90)) / 2
    assert forward_transfer(acc, random) == pytest.approx(12.5)  # ((40 - 20) + (10 - 5)) / 2


def test_single_task_gives_none_for_transfer_metrics():
    acc = [[73.5]]
    assert average_accuracy(acc) == pytest.approx(73.5)
    assert forgetting(acc) is None
    assert backward_transfer(acc) is None
    assert forward_transfer(acc, [10.0]) is None


def test_missing_superdiagonal_gives_no_forward_transfer():
    acc = [list(row) for row in ACC]
    acc[1][2] = None
    assert forward_transfer(acc, RANDOM) is None
    # the other metrics do not read the superdiagonal
    assert forgetting(acc) == pytest.approx(20.0)
    assert backward_transfer(acc) == pytest.approx(-15.0)


def test_no_random_accuracy_gives_no_forward_transfer():
    assert forward_transfer(ACC, None) is None
