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
    rule: anomalous when score >= t), the true and false positives. `regions` (a label per
    score, 1..n for anomalous regions, 0 normal) are carried along for `overlap_curve`."""

    def __init__(
        self,
        labels: np.ndarray,
        scores: np.ndarray,
        what: str = "the curve",
        regions: np.ndarray | None = None,
    ) -> None:
        truth = np.asarray(labels).astype(bool, copy=False).ravel()
        values = np.asarray(scores).ravel()
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        if truth.shape != values.shape:
            raise PadimError(f"{truth.size} labels for {values.size} scores")
        if regions is not None and np.asarray(regions).size != values.size:
            raise PadimError(f"{np.asarray(regions).size} region labels for {values.size} scores")
        check_both_classes(truth, what)
        self.sorted, hit, self.regions = _sorted_descending(values, truth, regions)
        self.ends = np.flatnonzero(np.r_[self.sorted[1:] != self.sorted[:-1], True])
        hits = np.cumsum(hit, dtype=np.int64)
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

    def overlap_curve(self, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, PRO) at every distinct threshold, from (0, 0): PRO is the mean over the
        regions given to the ranking of the share of the region's pixels at or above the
        threshold; FPR the share of normal pixels at or above it."""
        if self.regions is None:
            raise PadimError("the overlap curve needs the ranking made with region labels")
        flat = self.regions
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


KEY_TAG_LIMIT = 1 << 31  # region labels below this fit the low half of a 64-bit sort key


def _sorted_descending(
    values: np.ndarray, truth: np.ndarray, regions: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Values in descending order, with their labels (and region labels) in the same order.
    Ties may come in any order: every curve reads the counts at the ends of tied runs.

    float32 values (pixel maps: millions) are sorted as one 64-bit integer each, the value's
    bits made order-preserving (descending) above the region label and the label: a plain
    integer sort, about 3x faster than an argsort followed by the gathers it needs."""
    flat = None if regions is None else np.asarray(regions).ravel()
    if flat is not None and flat.size and (flat.min() < 0 or flat.max() >= KEY_TAG_LIMIT):
        raise PadimError("region labels must be in 0..2^31")
    if values.dtype != np.float32:
        order = np.argsort(-values)
        return values[order], truth[order], None if flat is None else flat[order]
    tags = truth.astype(np.uint64)
    if flat is not None:
        tags |= flat.astype(np.uint64) << np.uint64(1)
    bits = values.view(np.uint32)
    key = np.where(bits >> 31, bits, ~bits & 0x7FFFFFFF).astype(np.uint64)  # larger: lower
    key <<= np.uint64(32)
    key |= tags
    key.sort()
    high = (key >> np.uint64(32)).astype(np.uint32)
    ordered = np.where(high >> 31, high, ~high & 0x7FFFFFFF).view(np.float32)  # (its own inverse)
    low = key.astype(np.uint32)  # the tags
    del key
    hit = (low & 1).astype(bool)
    return ordered, hit, None if flat is None else (low >> 1).astype(np.int64)


def area_up_to(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """Area under a curve from fpr 0 to `limit` (interpolated there), divided by `limit`."""
    cut = int(np.searchsorted(fpr, limit, side="right"))
    if cut < len(fpr):
        f0, f1, p0, p1 = fpr[cut - 1], fpr[cut], tpr[cut - 1], tpr[cut]
        fpr = np.r_[fpr[:cut], limit]
        tpr = np.r_[tpr[:cut], p0 + (p1 - p0) * (limit - f0) / (f1 - f0)]
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    return min(area / limit, 1.0)
