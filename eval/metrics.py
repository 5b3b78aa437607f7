"""Scores, as the benchmarks define them, in percent (as the paper prints them).

F1 is of the positive class (label 1: paraphrase, duplicate). Spearman is Pearson on ranks, with
ties given their mean rank. The GLUE average follows the GLUE benchmark: one score per task, the
mean of a task's two metrics where it has two (MRPC and QQP: F1 and accuracy; STS-B: Pearson and
Spearman), MNLI's matched and mismatched averaged into one, then the mean over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Values = Sequence[float] | np.ndarray


def accuracy(pred: Values, gold: Values) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return 100.0 * float(np.mean(pred == gold)) if len(gold) else math.nan


def f1(pred: Values, gold: Values) -> float:
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp = float(np.sum(pred & gold))
    denominator = float(np.sum(pred) + np.sum(gold))
    return 100.0 * 2 * tp / denominator if denominator else 0.0


def mcc(pred: Values, gold: Values) -> float:
    """Matthews correlation of binary labels; 0 when a row or column of the confusion matrix is empty."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = float(np.sum(pred & gold)), float(np.sum(~pred & ~gold))
    fp, fn = float(np.sum(pred & ~gold)), float(np.sum(~pred & gold))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 100.0 * (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson(pred: Values, gold: Values) -> float:
    pred, gold = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    pred, gold = pred - pred.mean(), gold - gold.mean()
    denominator = math.sqrt(float(np.sum(pred**2) * np.sum(gold**2)))
    return 100.0 * float(np.sum(pred * gold)) / denominator if denominator else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(pred: Values, gold: Values) -> float:
    return pearson(_ranks(np.asarray(pred, dtype=float)), _ranks(np.asarray(gold, dtype=float)))


METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman,
}  # fmt: skip

# result name -> the metrics averaged into its GLUE score
GLUE_SCORE = {
    "cola": ("mcc",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"), "mnli_m": ("accuracy",), "mnli_mm": ("accuracy",), "qnli": ("accuracy",),
    "rte": ("accuracy",), "wnli": ("accuracy",),
}  # fmt: skip


def glue_average(results: Mapping[str, Mapping[str, float]]) -> tuple[float, list[str]] | None:
    """The GLUE average over the GLUE results present ({result name: {metric: value}}), and the
    tasks it covers; None when there is none."""
    task_scores: dict[str, float] = {}
    for name, metrics in GLUE_SCORE.items():
        if name in results:
            task_scores[name] = sum(results[name][m] for m in metrics) / len(metrics)
    if "mnli_m" in task_scores and "mnli_mm" in task_scores:
        task_scores["mnli"] = (task_scores.pop("mnli_m") + task_scores.pop("mnli_mm")) / 2
    if not task_scores:
        return None
    return sum(task_scores.values()) / len(task_scores), sorted(task_scores)
