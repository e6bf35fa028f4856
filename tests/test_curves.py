"""One ordering for every curve: AUROC, precision-recall, F1 and AUPRO equal scikit-learn's
and the per-region reference to 1e-6, ties included; the metric suite gives the numbers its
separate functions give."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from padim.curves import Ranking, area_up_to
from padim.errors import PadimError
from padim.evaluation.metrics import aupro, label_regions, metric_suite, region_recall


def reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """The per-region overlap integral computed directly: PRO and FPR at every distinct
    threshold from the thresholded masks (slow, obviously right)."""
    regions, n = label_regions(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[regions == r].mean() for r in range(1, n + 1)]))
    return area_up_to(np.array(fprs), np.array(pros), limit)


@pytest.mark.parametrize("seed", range(4))
def test_curves_equal_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    ranking = Ranking(labels, scores)
    assert ranking.auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    precision, recall, thresholds = ranking.precision_recall()
    p, r, t = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, p, atol=1e-12)
    np.testing.assert_allclose(recall, r, atol=1e-12)
    np.testing.assert_array_equal(thresholds, t)
    fpr, tpr = ranking.roc()
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_aupro_equals_the_direct_computation():
    rng = np.random.default_rng(5)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 3:9, 4:12] = True
    masks[0, 15:18, 15:22] = True
    masks[2, 10:20, 2:5] = True
    maps = np.round(rng.normal(masks * 1.5, 1.0), 2).astype(np.float32)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(
            reference_aupro(masks, maps, limit), abs=1e-9
        )


def test_suite_shares_one_sort_and_gives_the_separate_numbers():
    rng = np.random.default_rng(9)
    masks = np.zeros((6, 32, 32), bool)
    masks[1, 5:15, 5:12] = True
    masks[3, 20:30, 2:9] = True
    masks[4, 0:3, 0:32] = True
    maps = rng.normal(masks * 2.0, 1.0).astype(np.float32)
    labels = masks.reshape(6, -1).any(axis=1).astype(int)
    scores = maps.reshape(6, -1).max(axis=1)
    suite = metric_suite(labels, scores, 1.5, masks, maps)
    assert suite["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), 1e-9)
    assert suite["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-6)
    assert suite["region_recall"] == region_recall(masks, maps, 1.5)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    assert suite["pixel_f1"] == pytest.approx(np.max(2 * p * r / np.clip(p + r, 1e-12, None)))
    assert suite["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_one_class_is_a_clear_error():
    with pytest.raises(PadimError, match="no anomalous ones"):
        Ranking(np.zeros(5), np.arange(5.0), "pixel AUROC")
    with pytest.raises(PadimError, match="no normal ones"):
        Ranking(np.ones(5), np.arange(5.0))
