"""Threshold curves of binary labels from one ordering of the scores: ROC (and its area),
precision-recall, F1, and the per-region overlap curve (AUPRO).

Sorting is the cost: pooled pixel maps of a test set are millions of values. A `Ranking`
sorts them once (descending) and every curve reads its cumulative counts at the distinct
scores, so pixel AUROC, the best pixel F1 and AUPRO share one sort. Ties count as one
threshold (half credit in the AUROC), exactly as scikit-learn's curves do. Plain numpy.
"""

from __future__ import annotations

import numpy as np

from padim.errors import PadimError


def check_both_classes(labels: np.ndarray, what: str) -> None:
    """Fail clearly when `labels` (0 normal, 1 anomalous) lack one of the two classes."""
    labels = np.asarray(labels)
    positives = int(np.count_nonzero(labels))
    if positives == 0 or positives == labels.size:
        missing = "anomalous" if positives == 0 else "normal"
        raise PadimError(f"{what} needs both normal and anomalous examples; no {missing} ones")


class Ranking:
    """Scores sorted once, highest first, with their labels: at each distinct score t (the
    rule: anomalous when score >= t), the true and false positives."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, what: str = "the curve") -> None:
        truth = np.asarray(labels).astype(bool, copy=False).ravel()
        values = np.asarray(scores).ravel()
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        if truth.shape != values.shape:
            raise PadimError(f"{truth.size} labels for {values.size} scores")
        check_both_classes(truth, what)
        self.order = np.argsort(-values)  # ties are read as one threshold: any order in them
        self.sorted = values[self.order]
        self.ends = np.flatnonzero(np.r_[self.sorted[1:] != self.sorted[:-1], True])
        hits = np.cumsum(truth[self.order], dtype=np.int64)
        self.tp = hits[self.ends]
        self.fp = self.ends + 1 - self.tp
        self.thresholds = self.sorted[self.ends]  # descending, distinct
        self.positives, self.negatives = int(self.tp[-1]), int(self.fp[-1])

    def auroc(self) -> float:
        """Area under the ROC curve (trapezoids between distinct thresholds)."""
        tpr = np.r_[0.0, self.tp / self.positives]
        fpr = np.r_[0.0, self.fp / self.negatives]
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """False- and true-positive rates from (0, 0) to (1, 1)."""
        return np.r_[0.0, self.fp / self.negatives], np.r_[0.0, self.tp / self.positives]

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Precision, recall and thresholds in scikit-learn's order (thresholds ascending; a
        last point precision 1, recall 0 without a threshold)."""
        precision = self.tp / (self.tp + self.fp)
        recall = self.tp / self.positives
        return (
            np.r_[precision[::-1], 1.0],
            np.r_[recall[::-1], 0.0],
            self.thresholds[::-1],
        )

    def f1(self) -> tuple[np.ndarray, np.ndarray]:
        """F1 at every distinct threshold (ascending thresholds, as `precision_recall`)."""
        precision, recall, thresholds = self.precision_recall()
        return 2 * precision * recall / np.clip(precision + recall, 1e-12, None), thresholds

    def overlap_curve(self, regions: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, PRO) at every distinct threshold, from (0, 0): PRO is the mean over the
        `regions` (a label per pixel, 1..n, 0 normal) of the share of the region's pixels at or
        above the threshold; FPR the share of normal pixels at or above it."""
        flat = np.asarray(regions).ravel()[self.order]
        sizes = np.bincount(flat, minlength=n_regions + 1).astype(np.float64)
        normal = flat == 0
        n_normal = int(np.count_nonzero(normal))
        if n_regions == 0:
            raise PadimError("AUPRO needs anomalous regions in the ground truth; there are none")
        if n_normal == 0:
            raise PadimError("AUPRO needs normal pixels in the ground truth; there are none")
        weights = 1.0 / (n_regions * np.maximum(sizes, 1.0))
        weights[0] = 0.0
        pro = np.cumsum(weights[flat])[self.ends]
        fpr = np.cumsum(normal, dtype=np.int64)[self.ends] / n_normal
        return np.r_[0.0, fpr], np.r_[0.0, pro]


def area_up_to(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """Area under a curve from fpr 0 to `limit` (interpolated there), divided by `limit`."""
    cut = int(np.searchsorted(fpr, limit, side="right"))
    if cut < len(fpr):
        f0, f1, p0, p1 = fpr[cut - 1], fpr[cut], tpr[cut - 1], tpr[cut]
        fpr = np.r_[fpr[:cut], limit]
        tpr = np.r_[tpr[:cut], p0 + (p1 - p0) * (limit - f0) / (f1 - f0)]
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    return min(area / limit, 1.0)
