"""The learning check on hand-made metrics: which tasks count, the share of errors fixed, the verdict."""
import pytest

from learning_check import ERRORS_FIXED_REQUIRED, learning_check, learns, weak_tasks


def metrics_of(zero_shot: dict[str, list[float]], matrix: dict[str, list[list[float]]]) -> dict:
    return {"zero_shot": zero_shot, "accuracy_matrix": matrix}


def test_weak_tasks_are_the_lower_half_by_zero_shot_accuracy():
    assert weak_tasks([100.0, 33.3]) == [1]
    assert weak_tasks([75.0, 25.0, 50.0, 90.0]) == [1, 2]
    assert weak_tasks([60.0, 40.0, 40.0]) == [1, 2]  # ties at the cut-off count
    assert weak_tasks([50.0, 50.0]) == [0, 1]


def test_share_of_zero_shot_errors_fixed_on_the_weak_tasks_only():
    # Task 0 is read well zero-shot and forgotten (A[1][0] = 0): it does not count, nor does the
    # final row. Task 2 and task 1 are the weak half: (70 - 40) + (60 - 20) gained of (60 + 80) errors.
    matrix = [[100.0, 10.0, 5.0], [0.0, 70.0, 5.0], [0.0, 0.0, 60.0]]
    check = learning_check(metrics_of({"standard": [90.0, 40.0, 20.0]}, {"standard": matrix}), "standard")
    assert check.weak_tasks == [1, 2]
    assert check.learned == [70.0, 60.0] and check.zero_shot == [40.0, 20.0]
    assert check.errors_fixed == pytest.approx(70 / 140)
    assert check.passed


def test_verdict_at_the_bar_and_below_it():
    zero_shot = {"standard": [100.0, 40.0]}
    at_bar = 40.0 + ERRORS_FIXED_REQUIRED * 60.0
    assert learning_check(metrics_of(zero_shot, {"standard": [[100.0, 0.0], [0.0, at_bar]]}), "standard").passed
    below = learning_check(metrics_of(zero_shot, {"standard": [[100.0, 0.0], [100.0, at_bar - 1]]}), "standard")
    assert not below.passed and below.errors_fixed < ERRORS_FIXED_REQUIRED
    # The untrained model *is* zero-shot: nothing fixed, whatever it scores elsewhere.
    assert learning_check(metrics_of(zero_shot, {"standard": [[100.0, 40.0], [95.0, 40.0]]}), "standard"
                          ).errors_fixed == 0.0
    # Zero-shot already perfect everywhere: nothing to learn that it cannot read, so no pass.
    assert not learning_check(metrics_of({"standard": [100.0, 100.0]}, {"standard": [[100.0, 0], [0, 100.0]]}),
                              "standard").passed


def test_every_evaluation_mode_must_pass():
    zero_shot = {"modality_aware": [100.0, 33.3], "modality_agnostic": [100.0, 33.3]}
    matrix = {"modality_aware": [[100.0, 0.0], [90.0, 88.9]], "modality_agnostic": [[100.0, 0.0], [90.0, 38.9]]}
    verdict, checks = learns(metrics_of(zero_shot, matrix))
    assert not verdict and [c.passed for c in checks] == [True, False]
