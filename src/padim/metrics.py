"""Detection and localisation metrics (image AUROC on max-of-map scores, pooled pixel AUROC)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from padim.errors import PadimError


def _check_both_classes(labels: np.ndarray, what: str) -> None:
    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        missing = "anomalous" if 1 not in present else "normal"
        raise PadimError(f"{what} needs both normal and anomalous examples; no {missing} ones")


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores (label 1 = anomalous)."""
    labels = np.asarray(labels).astype(int).ravel()
    _check_both_classes(labels, "image AUROC")
    return float(roc_auc_score(labels, np.asarray(scores).ravel()))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels of all test images pooled (MVTec AD protocol)."""
    truth = np.asarray(masks).astype(bool).ravel()
    _check_both_classes(truth.astype(int), "pixel AUROC")
    return float(roc_auc_score(truth, np.asarray(maps, dtype=np.float32).ravel()))


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising F1 (an image is anomalous when score > threshold)."""
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_both_classes(labels, "threshold calibration")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve predicts positive for score >= t; step just below t so `>` agrees.
    return float(np.nextafter(thresholds[best], -np.inf))
