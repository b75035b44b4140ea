"""Continual-learning metrics from an accuracy matrix.

``A[i, j]`` is the accuracy (in percent) on task j's test data after training task i. The engine
fills the whole T x T matrix: entries above the diagonal (j > i) are the accuracy on a task not
yet trained, with its classes added to the label space from their text embeddings; they give
forward transfer. With ``T`` tasks indexed 0..T-1 (the formulas in METHODS.md use 1..T):

- final average accuracy        ``mean_j A[T-1, j]``
- average incremental accuracy  ``mean_i mean_{j<=i} A[i, j]``
- forgetting                    ``mean_{j<T-1} max_{j<=i<T-1} (A[i, j] - A[T-1, j])``
- backward transfer (BWT)       ``mean_{j<T-1} (A[T-1, j] - A[j, j])``
- forward transfer (FWT)        ``mean_{j>=1} (A[j-1, j] - Z[j])``, Z the zero-shot accuracies

Modality streams (``m(j)`` the modality of task j):

- accuracy on modality m after task i   ``mean_{j<=i, m(j)=m} A[i, j]`` (modalities seen by task i)
- BWT when a modality returns at task i ``mean_{j<i, m(j)=m(i)} (A[i, j] - A[i-1, j])``: what
  training the modality's new task did to its earlier tasks; ``recurrence_bwt`` is the mean over
  every return (``None`` in a stream where no modality returns)

Forgetting decomposition (:func:`forgetting_decomposition_summary`; ``N[i, j]`` the accuracy of a
nearest-class-mean probe on the method's representation after task i, :mod:`mmcl.forgetting`):

- old-class accuracy after task i, own classifier vs probe: sample-weighted over tasks ``j < i``
- own drop        ``mean_{j<T-1} (A[j, j] - A[T-1, j])`` (= -BWT): what the method lost on old tasks
- NCM drop        ``mean_{j<T-1} (N[j, j] - N[T-1, j])``: what its representation lost (representation
  forgetting); own drop minus NCM drop is what the classifier lost on top
- classifier gap  final NCM old-class accuracy minus final own old-class accuracy: how much better the
  old classes read from the current representation than from the method's own classifier
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _square(matrix) -> np.ndarray:
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"an accuracy matrix must be square and non-empty, got shape {a.shape}")
    return a


def final_average_accuracy(matrix) -> float:
    a = _square(matrix)
    return float(a[-1].mean())


def average_incremental_accuracy(matrix) -> float:
    a = _square(matrix)
    return float(np.mean([a[i, : i + 1].mean() for i in range(len(a))]))


def forgetting(matrix) -> float:
    a = _square(matrix)
    t = len(a)
    if t < 2:
        return 0.0
    return float(np.mean([a[j:t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]))


def backward_transfer(matrix) -> float:
    a = _square(matrix)
    t = len(a)
    if t < 2:
        return 0.0
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def forward_transfer(matrix, zero_shot: Sequence[float]) -> float:
    a = _square(matrix)
    z = np.asarray(zero_shot, dtype=np.float64)
    if len(z) != len(a):
        raise ValueError(f"zero-shot accuracies have {len(z)} entries for {len(a)} tasks")
    if len(a) < 2:
        return 0.0
    return float(np.mean([a[j - 1, j] - z[j] for j in range(1, len(a))]))


def old_new_accuracy(correct: Sequence[int], counts: Sequence[int]) -> tuple[float | None, float]:
    """Sample-weighted accuracy (percent) on the earlier tasks and on the last task, after the last task.

    ``correct[j]`` / ``counts[j]`` are the final row's correct predictions and test sizes.
    """
    correct, counts = np.asarray(correct, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    new = 100.0 * correct[-1] / counts[-1]
    old = 100.0 * correct[:-1].sum() / counts[:-1].sum() if len(counts) > 1 else None
    return (None if old is None else float(old)), float(new)


def modality_accuracy_after_each_task(matrix, task_modalities: Sequence[str]) -> list[dict[str, float]]:
    """Row ``i``: modality -> mean accuracy over the tasks ``j <= i`` of that modality (seen ones only)."""
    a = _square(matrix)
    if len(task_modalities) != len(a):
        raise ValueError(f"{len(task_modalities)} task modalities for {len(a)} tasks")
    rows = []
    for i in range(len(a)):
        by_modality: dict[str, list[float]] = {}
        for j in range(i + 1):
            by_modality.setdefault(task_modalities[j], []).append(float(a[i, j]))
        rows.append({m: float(np.mean(v)) for m, v in by_modality.items()})
    return rows


def recurrence_backward_transfer(matrix, task_modalities: Sequence[str]) -> dict[int, float]:
    """Task index ``i`` of every return of a modality -> mean change of the accuracy on that
    modality's earlier tasks over training task ``i``: ``mean_{j<i, m(j)=m(i)} (A[i, j] - A[i-1, j])``."""
    a = _square(matrix)
    if len(task_modalities) != len(a):
        raise ValueError(f"{len(task_modalities)} task modalities for {len(a)} tasks")
    returns = {}
    for i in range(1, len(a)):
        earlier = [j for j in range(i) if task_modalities[j] == task_modalities[i]]
        if earlier:
            returns[i] = float(np.mean([a[i, j] - a[i - 1, j] for j in earlier]))
    return returns


def summarize(matrix, zero_shot: Sequence[float], final_correct: Sequence[int], final_counts: Sequence[int],
              task_modalities: Sequence[str] | None = None) -> dict:
    """Every summary metric of one evaluation mode, as a JSON-ready dict."""
    a = _square(matrix)
    old, new = old_new_accuracy(final_correct, final_counts)
    summary = {
        "final_accuracy": final_average_accuracy(a),
        "average_incremental_accuracy": average_incremental_accuracy(a),
        "forgetting": forgetting(a),
        "bwt": backward_transfer(a),
        "fwt": forward_transfer(a, zero_shot),
        "old_accuracy": old,
        "new_accuracy": new,
    }
    if task_modalities is not None:
        by_modality: dict[str, list[float]] = {}
        for j, modality in enumerate(task_modalities):
            by_modality.setdefault(modality, []).append(float(a[-1, j]))
        summary["accuracy_by_modality"] = {m: float(np.mean(v)) for m, v in by_modality.items()}
        summary["accuracy_by_modality_after_task"] = modality_accuracy_after_each_task(a, task_modalities)
        returns = recurrence_backward_transfer(a, task_modalities)
        summary["recurrence_bwt"] = float(np.mean(list(returns.values()))) if returns else None
        summary["recurrence_bwt_by_task"] = {str(i): v for i, v in returns.items()}
    return summary


def forgetting_decomposition_summary(own_rows: Sequence[Sequence[float]], ncm_rows: Sequence[Sequence[float]],
                                     own_old: Sequence[float | None], ncm_old: Sequence[float | None]) -> dict:
    """The forgetting decomposition of one evaluation mode of a run, as a JSON-ready dict.

    ``own_rows[i]`` is row i of the accuracy matrix (at least tasks ``0..i``), ``ncm_rows[i]`` the
    probe's accuracies on tasks ``0..i`` after task i; ``own_old[i]`` / ``ncm_old[i]`` the
    sample-weighted old-class accuracies after task i (None after the first). Returns the per-task-end
    lists ``own_old``, ``ncm_old``, the probe's lower-triangular ``ncm_matrix``, and the final
    ``final_own_old``, ``final_ncm_old``, ``classifier_gap``, ``own_drop``, ``ncm_drop`` (None
    with one task).
    """
    t = len(ncm_rows)
    if len(own_rows) != t or len(own_old) != t or len(ncm_old) != t:
        raise ValueError("own rows, probe rows and old-class accuracies must cover the same task ends")
    if any(len(ncm_rows[i]) != i + 1 or len(own_rows[i]) < i + 1 for i in range(t)):
        raise ValueError("row i must hold tasks 0..i")
    summary = {"own_old": [None if v is None else float(v) for v in own_old],
               "ncm_old": [None if v is None else float(v) for v in ncm_old],
               "ncm_matrix": [[float(v) for v in row] for row in ncm_rows]}
    if t < 2:
        return summary | {"final_own_old": None, "final_ncm_old": None, "classifier_gap": None,
                          "own_drop": None, "ncm_drop": None}
    final_own, final_ncm = float(own_old[-1]), float(ncm_old[-1])
    return summary | {
        "final_own_old": final_own, "final_ncm_old": final_ncm, "classifier_gap": final_ncm - final_own,
        "own_drop": float(np.mean([own_rows[j][j] - own_rows[t - 1][j] for j in range(t - 1)])),
        "ncm_drop": float(np.mean([ncm_rows[j][j] - ncm_rows[t - 1][j] for j in range(t - 1)])),
    }
