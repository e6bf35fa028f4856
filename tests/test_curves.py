"""One ordering for every curve: AUROC and precision-recall equal scikit-learn's, ties
included (AUPRO and the metric suite's shared sort: tests/evaluation/test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from padim.curves import Ranking
from padim.errors import PadimError


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


def test_one_class_is_a_clear_error():
    with pytest.raises(PadimError, match="no anomalous ones"):
        Ranking(np.zeros(5), np.arange(5.0), "pixel AUROC")
    with pytest.raises(PadimError, match="no normal ones"):
        Ranking(np.ones(5), np.arange(5.0))


@pytest.mark.parametrize("seed", range(3))
def test_float32_scores_sorted_as_integer_keys_give_the_float64_curves(seed):
    """Pixel maps (float32) are ranked by a 64-bit integer sort of their bits with the labels
    and region labels alongside: the same curves as the argsort of the same values, with ties,
    negative scores and both zeros."""
    rng = np.random.default_rng(seed)
    n = 5000
    regions = np.where(rng.random(n) < 0.2, rng.integers(1, 40, n), 0)
    labels = regions > 0
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1).astype(np.float32)
    scores[:50] = 0.0
    scores[50:100] = -0.0
    scores[100:103] = [np.float32(3.4e38), np.float32(-3.4e38), np.float32(1e-45)]
    fast = Ranking(labels, scores, regions=regions)
    slow = Ranking(labels, scores.astype(np.float64), regions=regions)
    np.testing.assert_array_equal(fast.sorted, slow.sorted.astype(np.float32))
    np.testing.assert_array_equal(fast.tp, slow.tp)
    np.testing.assert_array_equal(fast.fp, slow.fp)
    assert fast.auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for a, b in zip(fast.overlap_curve(39), slow.overlap_curve(39), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(fast.sorted) <= 0)


def test_overlap_curve_needs_region_labels():
    with pytest.raises(PadimError, match="region labels"):
        Ranking(np.r_[0, 1], np.r_[0.0, 1.0]).overlap_curve(1)
    with pytest.raises(PadimError, match="region labels"):
        Ranking(np.r_[0, 1], np.r_[0.0, 1.0], regions=np.r_[0, 1, 1])
