"""Classification and anomaly metrics, and anomaly thresholds.

Pure functions over numpy arrays with scikit-learn's definitions and terms
(`average="weighted"` and `"macro"`, `zero_division=0`, `pos_label`). Every
result is a JSON-able dict of floats, ints, strings and lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Shared histogram edges for reconstruction errors, so that plots of several
# bundles line up. Errors of features and reconstructions in [0, 1] lie in
# [0, 1], and the first bin counts everything below 1e-6.
ERROR_HISTOGRAM_EDGES: tuple[float, ...] = (0.0, *np.geomspace(1e-6, 1.0, 49))
ERROR_QUANTILES: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)

CLASSIFIER_SUMMARY: tuple[str, ...] = (
    "accuracy",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "f1_macro",
)
"""Keys of `classification_metrics` that summarize a classifier, in the order
that tables show them."""


def _check_rows(name: str, values: np.ndarray, rows: int) -> None:
    if len(values) != rows:
        raise ValueError(f"{name} has {len(values)} rows, expected {rows}")


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ValueError(
            f"{name} has {bad} NaN or infinite values; the model diverged or "
            "its inputs are not encoded features"
        )


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Score class probabilities against true class indices.

    The predicted class is the argmax of each row. Every class in `classes`
    counts in the macro averages and the confusion matrix, even one absent
    from `y_true`, so that runs on different splits stay comparable.

    Args:
        y_true: int array (rows,) of indices into `classes`.
        probabilities: array (rows, len(classes)).
        classes: class names, in index order.

    Returns:
        A dict with these keys:
        - `accuracy`.
        - `precision`, `recall` and `f1` with `_weighted` and `_macro`
          suffixes.
        - `per_class`: name to precision, recall, f1 and support.
        - `confusion_matrix`: `labels` and `matrix`, whose rows are true
          classes and columns predicted ones, in `classes` order.
        - `support`: rows scored.

    Raises:
        ValueError: empty input, shapes that disagree, or class indices
            outside `classes`.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if len(y_true) == 0:
        raise ValueError("no rows to score")
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}, expected "
            f"(rows, {len(classes)}) for classes {list(classes)}"
        )
    _check_rows("probabilities", probabilities, len(y_true))
    _check_finite("probabilities", probabilities)
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise ValueError(
            f"class indices range over {y_true.min()}..{y_true.max()}, "
            f"but there are {len(classes)} classes"
        )

    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1)
    result: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("weighted", "macro"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        result[f"f1_{average}"] = float(f1)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    result["confusion_matrix"] = {
        "labels": list(classes),
        "matrix": matrix.astype(int).tolist(),
    }
    result["support"] = len(y_true)
    return result


def threshold_for_fpr(benign_scores: np.ndarray, fpr: float) -> float:
    """Return the lowest observed score that flags at most `fpr` of benign rows.

    A flow is flagged when its score is strictly above the threshold. The
    result is an order statistic of `benign_scores`: at most
    floor(fpr * rows) benign scores exceed it, and with fewer benign rows
    than 1 / `fpr` it is their maximum.

    Raises:
        ValueError: no scores, scores that are not finite, or `fpr` outside
            (0, 1).
    """
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64))
    if len(scores) == 0:
        raise ValueError("no benign scores to choose a threshold from")
    _check_finite("benign scores", scores)
    if not 0 < fpr < 1:
        raise ValueError(f"the target false-positive rate must be in (0, 1), got {fpr}")

    allowed = int(np.floor(fpr * len(scores)))
    return float(scores[len(scores) - 1 - allowed])


def anomaly_metrics(
    is_malicious: np.ndarray,
    scores: np.ndarray,
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """Score anomaly scores as a benign-versus-malicious detector.

    Malicious is the positive class (`pos_label=1`); a flow is flagged when
    its score is strictly above a threshold.

    Args:
        is_malicious: bool or 0/1 array (rows,).
        scores: anomaly scores (rows,); higher means more anomalous.
        thresholds: name to threshold, for example `study` and
            `validation_fpr`.

    Returns:
        A dict with these keys:
        - `roc_auc`.
        - `pr_auc`: scikit-learn's average precision, the step-wise area
          under the precision-recall curve.
        - `benign` and `malicious`: row counts.
        - `thresholds`: name to threshold, precision, recall, f1,
          false-positive rate and confusion matrix [[tn, fp], [fn, tp]].

    Raises:
        ValueError: shapes that disagree, non-finite scores, or a single
            class, for which ROC-AUC is undefined.
    """
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    truth = np.asarray(is_malicious).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    _check_rows("scores", scores, len(truth))
    _check_finite("scores", scores)
    malicious = int(truth.sum())
    benign = len(truth) - malicious
    if malicious == 0 or benign == 0:
        raise ValueError(
            f"anomaly metrics need benign and malicious flows, got {benign} "
            f"benign and {malicious} malicious; score a split that has both"
        )

    result: dict[str, Any] = {
        "roc_auc": float(roc_auc_score(truth, scores)),
        "pr_auc": float(average_precision_score(truth, scores, pos_label=1)),
        "benign": benign,
        "malicious": malicious,
        "thresholds": {},
    }
    for name, threshold in thresholds.items():
        flagged = scores > threshold
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, flagged, average="binary", pos_label=1, zero_division=0
        )
        (tn, fp), (fn, tp) = confusion_matrix(truth, flagged, labels=[False, True])
        result["thresholds"][name] = {
            "threshold": float(threshold),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "false_positive_rate": float(fp / benign),
            "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        }
    return result


def score_distribution(
    scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Summarize anomaly scores per class, for plots and reports.

    Returns:
        `histogram_edges` (shared by all classes, `ERROR_HISTOGRAM_EDGES`)
        and `per_class`: name to count, mean, std, quantiles (`ERROR_QUANTILES`
        as strings to values) and histogram counts. Scores above the last
        edge count in the last bin. A class without rows gets count 0 only.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    _check_rows("scores", scores, len(labels))
    edges = np.asarray(ERROR_HISTOGRAM_EDGES)
    clipped = np.minimum(scores, edges[-1])

    per_class: dict[str, Any] = {}
    for index, name in enumerate(classes):
        values = clipped[labels == index]
        if len(values) == 0:
            per_class[name] = {"count": 0}
            continue
        raw = scores[labels == index]
        per_class[name] = {
            "count": len(raw),
            "mean": float(raw.mean()),
            "std": float(raw.std()),
            "quantiles": {
                f"{q:g}": float(v)
                for q, v in zip(
                    ERROR_QUANTILES, np.quantile(raw, ERROR_QUANTILES), strict=True
                )
            },
            "histogram": np.histogram(values, bins=edges)[0].astype(int).tolist(),
        }
    return {"histogram_edges": [float(e) for e in edges], "per_class": per_class}
