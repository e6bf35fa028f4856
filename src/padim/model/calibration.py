"""Choosing a threshold: a quantile of good images' scores, or the F1-optimal one on labelled
data. Plain numpy (scikit-learn for the precision-recall curve)."""

from __future__ import annotations

import numpy as np

from padim.errors import PadimError


def check_both_classes(labels: np.ndarray, what: str) -> None:
    """Fail clearly when `labels` (0 normal, 1 anomalous) lack one of the two classes."""
    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        missing = "anomalous" if 1 not in present else "normal"
        raise PadimError(f"{what} needs both normal and anomalous examples; no {missing} ones")


def f1_curve(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """F1 at every distinct score threshold (anomalous when score >= threshold)."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels).astype(int).ravel()
    check_both_classes(labels, what)
    precision, recall, thresholds = precision_recall_curve(
        labels, np.asarray(scores, dtype=np.float64).ravel()
    )
    return 2 * precision * recall / np.clip(precision + recall, 1e-12, None), thresholds


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising F1 (an image is anomalous when score > threshold)."""
    f1, thresholds = f1_curve(labels, scores, "threshold calibration")
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve predicts positive for score >= t; step just below t so `>` agrees.
    return float(np.nextafter(thresholds[best], -np.inf))


def quantile_threshold(good_scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of good images' scores (anomalous above it)."""
    return float(np.quantile(np.asarray(good_scores, dtype=np.float64), quantile))


def score_summary(scores: np.ndarray) -> dict[str, float]:
    """Count, range, centre, spread and upper quantiles of a set of scores."""
    q = np.quantile(scores, [0.5, 0.95, 0.99])
    return {
        "n": int(scores.size),
        "min": float(scores.min()),
        "median": float(q[0]),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "q95": float(q[1]),
        "q99": float(q[2]),
        "max": float(scores.max()),
    }
