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
