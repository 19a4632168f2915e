"""Classification and anomaly metrics against values worked out by hand."""

import json

import numpy as np
import pytest

from edgedp.metrics import (
    ERROR_HISTOGRAM_EDGES,
    anomaly_metrics,
    classification_metrics,
    score_distribution,
    threshold_for_fpr,
)

CLASSES = ["Benign", "DDoS", "Okiru"]


def _one_hot(predicted, classes=3):
    return np.eye(classes)[predicted]


def test_classification_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])

    result = classification_metrics(y_true, _one_hot(y_pred), CLASSES)

    # Benign: tp 3, fp 1, fn 1; DDoS: tp 1, fp 1, fn 1; Okiru: tp 2.
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["per_class"]["Benign"]["precision"] == pytest.approx(3 / 4)
    assert result["per_class"]["DDoS"]["recall"] == pytest.approx(1 / 2)
    assert result["per_class"]["Okiru"]["f1"] == pytest.approx(1.0)
    assert result["per_class"]["Benign"]["support"] == 4
    assert result["f1_macro"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert result["f1_weighted"] == pytest.approx((4 * 3 / 4 + 2 * 1 / 2 + 2 * 1) / 8)
    assert result["confusion_matrix"]["labels"] == CLASSES
    assert result["confusion_matrix"]["matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert result["support"] == 8


def test_classification_is_json():
    y_true = np.array([0, 1, 2, 1])

    result = classification_metrics(y_true, _one_hot(np.array([0, 1, 1, 1])), CLASSES)

    assert json.loads(json.dumps(result)) == result


def test_absent_class_counts_as_zero():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 1])

    result = classification_metrics(y_true, _one_hot(y_pred), CLASSES)

    assert result["per_class"]["Okiru"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert result["f1_macro"] == pytest.approx(2 / 3)
    assert result["f1_weighted"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y_true", "probabilities", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 3)), "no rows"),
        (np.array([0, 1]), np.zeros((2, 2)), r"expected \(rows, 3\)"),
        (np.array([0, 1, 2]), np.zeros((2, 3)), "has 2 rows, expected 3"),
        (np.array([0, 3]), np.zeros((2, 3)), "3 classes"),
        (np.array([0, 1]), np.full((2, 3), np.nan), "NaN"),
    ],
)
def test_classification_rejects_bad_input(y_true, probabilities, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, probabilities, CLASSES)


def test_threshold_bounds_false_positives():
    scores = np.random.default_rng(0).random(1000)

    for fpr in (0.001, 0.01, 0.05, 0.5):
        threshold = threshold_for_fpr(scores, fpr)
        assert np.count_nonzero(scores > threshold) <= int(fpr * 1000)
        # The next lower observed score would flag one row too many.
        lower = scores[scores < threshold].max()
        assert np.count_nonzero(scores > lower) > int(fpr * 1000)


def test_threshold_with_few_rows_is_max():
    assert threshold_for_fpr(np.array([0.3, 0.1, 0.2]), 0.01) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("scores", "fpr", "message"),
    [
        (np.array([]), 0.01, "no benign scores"),
        (np.array([0.1, np.nan]), 0.01, "NaN"),
        (np.array([0.1]), 0.0, r"in \(0, 1\)"),
        (np.array([0.1]), 1.0, r"in \(0, 1\)"),
    ],
)
def test_threshold_rejects_bad_input(scores, fpr, message):
    with pytest.raises(ValueError, match=message):
        threshold_for_fpr(scores, fpr)


def test_anomaly_by_hand():
    is_malicious = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])

    result = anomaly_metrics(is_malicious, scores, {"low": 0.4, "high": 0.75})

    # 16 benign-malicious pairs; only (0.6, 0.5) is ordered wrongly.
    assert result["roc_auc"] == pytest.approx(15 / 16)
    assert result["benign"] == 4
    assert result["malicious"] == 4
    low = result["thresholds"]["low"]
    assert low["confusion_matrix"] == [[3, 1], [0, 4]]
    assert low["precision"] == pytest.approx(4 / 5)
    assert low["recall"] == pytest.approx(1.0)
    assert low["false_positive_rate"] == pytest.approx(1 / 4)
    high = result["thresholds"]["high"]
    assert high["confusion_matrix"] == [[4, 0], [2, 2]]
    assert high["f1"] == pytest.approx(2 / 3)


def test_anomaly_perfect_separation():
    is_malicious = np.array([False, False, True, True])
    scores = np.array([0.01, 0.02, 0.5, 0.6])

    result = anomaly_metrics(is_malicious, scores, {})

    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["pr_auc"] == pytest.approx(1.0)


def test_anomaly_needs_both_classes():
    with pytest.raises(ValueError, match="0 malicious"):
        anomaly_metrics(np.zeros(3, dtype=bool), np.array([0.1, 0.2, 0.3]), {})


def test_score_distribution_counts():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 50 + [1] * 30)
    scores = np.concatenate([rng.random(50) * 0.01, rng.random(30)])

    result = score_distribution(scores, labels, CLASSES)

    assert len(result["histogram_edges"]) == len(ERROR_HISTOGRAM_EDGES)
    benign = result["per_class"]["Benign"]
    assert benign["count"] == 50
    assert sum(benign["histogram"]) == 50
    assert benign["mean"] == pytest.approx(scores[:50].mean())
    assert benign["quantiles"]["0.5"] == pytest.approx(np.median(scores[:50]))
    assert sum(result["per_class"]["DDoS"]["histogram"]) == 30
    assert result["per_class"]["Okiru"] == {"count": 0}
