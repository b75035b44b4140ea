"""Metric formulas against matrices computed by hand."""
import pytest

from mmcl import metrics

# A[i, j]: accuracy on task j after training task i (upper triangle: not yet trained).
A = [[80.0, 10.0, 5.0],
     [60.0, 70.0, 20.0],
     [40.0, 50.0, 90.0]]
ZERO_SHOT = [30.0, 5.0, 10.0]


def test_final_average_accuracy_is_mean_of_last_row():
    assert metrics.final_average_accuracy(A) == pytest.approx((40 + 50 + 90) / 3)


def test_average_incremental_accuracy_averages_lower_triangle_rows():
    # rows: 80; (60+70)/2 = 65; (40+50+90)/3 = 60
    assert metrics.average_incremental_accuracy(A) == pytest.approx((80 + 65 + 60) / 3)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(80, 60) - 40 = 40; task 1: 70 - 50 = 20
    assert metrics.forgetting(A) == pytest.approx(30.0)
    # the best accuracy may come after the task was trained: task 0 peaks at 70 after task 1
    later_peak = [[50.0, 0.0, 0.0], [70.0, 60.0, 0.0], [30.0, 60.0, 80.0]]
    assert metrics.forgetting(later_peak) == pytest.approx(((70 - 30) + (60 - 60)) / 2)


def test_backward_transfer_compares_with_just_trained():
    assert metrics.backward_transfer(A) == pytest.approx(((40 - 80) + (50 - 70)) / 2)


def test_forward_transfer_against_zero_shot():
    # task 1: A[0,1] - Z[1] = 10 - 5; task 2: A[1,2] - Z[2] = 20 - 10
    assert metrics.forward_transfer(A, ZERO_SHOT) == pytest.approx(7.5)


def test_old_new_accuracy_is_sample_weighted():
    old, new = metrics.old_new_accuracy(correct=[40, 10, 90], counts=[50, 200, 100])
    assert old == pytest.approx(100 * 50 / 250)
    assert new == pytest.approx(90.0)


def test_single_task_has_no_forgetting_and_no_old_accuracy():
    assert metrics.forgetting([[77.0]]) == 0.0
    assert metrics.backward_transfer([[77.0]]) == 0.0
    assert metrics.old_new_accuracy([7], [10]) == (None, 70.0)


def test_summarize_groups_final_accuracy_by_task_modality():
    summary = metrics.summarize(A, ZERO_SHOT, [40, 50, 90], [100, 100, 100], ["audio", "image", "audio"])
    assert summary["accuracy_by_modality"] == {"audio": pytest.approx(65.0), "image": pytest.approx(50.0)}
    assert summary["final_accuracy"] == pytest.approx(60.0)
    assert summary["old_accuracy"] == pytest.approx(45.0)


def test_rejects_non_square_matrices():
    with pytest.raises(ValueError, match="square"):
        metrics.final_average_accuracy([[1.0, 2.0]])
    with pytest.raises(ValueError, match="zero-shot"):
        metrics.forward_transfer(A, [1.0])


# A stream where image returns at task 2 and audio at task 3.
RECURRING = [[80.0, 5.0, 3.0, 2.0],
             [70.0, 90.0, 4.0, 1.0],
             [50.0, 85.0, 60.0, 6.0],
             [55.0, 40.0, 58.0, 70.0]]
RECURRING_MODALITIES = ["image", "audio", "image", "audio"]


def test_modality_accuracy_after_each_task_averages_seen_tasks_of_the_modality():
    rows = metrics.modality_accuracy_after_each_task(RECURRING, RECURRING_MODALITIES)
    assert rows == [{"image": 80.0}, {"image": 70.0, "audio": 90.0}, {"image": 55.0, "audio": 85.0},
                    {"image": 56.5, "audio": 55.0}]


def test_backward_transfer_when_a_modality_returns():
    # task 2 (image again): image task 0 went 70 -> 50; task 3 (audio again): audio task 1 went 85 -> 40
    assert metrics.recurrence_backward_transfer(RECURRING, RECURRING_MODALITIES) == {2: -20.0, 3: -45.0}
    summary = metrics.summarize(RECURRING, [0.0] * 4, [1, 1, 1, 1], [2, 2, 2, 2], RECURRING_MODALITIES)
    assert summary["recurrence_bwt"] == -32.5 and summary["recurrence_bwt_by_task"] == {"2": -20.0, "3": -45.0}
    once = metrics.summarize(RECURRING, [0.0] * 4, [1] * 4, [2] * 4, ["image", "audio", "video", "depth"])
    assert once["recurrence_bwt"] is None and once["recurrence_bwt_by_task"] == {}
