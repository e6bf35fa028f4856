"""Operating points: target false-alarm rate and target recall thresholds, their intervals."""

from __future__ import annotations

import numpy as np
import pytest

from padim.errors import PadimError
from padim.model.calibration import (
    clopper_pearson,
    images_to_show,
    measured_point,
    target_fpr_threshold,
    target_recall_threshold,
)


@pytest.mark.parametrize(("n", "fpr"), [(42, 0.01), (42, 0.05), (200, 0.01), (1000, 0.003)])
def test_target_fpr_is_met_on_the_good_images(n, fpr):
    good = np.random.default_rng(n).gamma(4, 10, n)
    thr = target_fpr_threshold(good, fpr)
    flagged = int((good > thr).sum())
    assert flagged <= fpr * n
    assert int((good > np.nextafter(thr, -np.inf)).sum()) == flagged + 1  # the lowest such


def test_target_recall_keeps_recall_and_takes_the_best_precision():
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.array([1, 2, 3, 4, 9, 10, 5, 8, 11, 12], float)
    for target in (0.5, 0.75, 1.0):
        thr = target_recall_threshold(labels, scores, target)
        best = 0.0  # brute force: the best precision of any threshold keeping the recall
        for t in np.unique(scores) - 1e-9:
            hit = scores > t
            if hit[labels == 1].mean() >= target:
                best = max(best, (labels[hit] == 1).mean())
        hit = scores > thr
        assert hit[labels == 1].mean() >= target
        assert (labels[hit] == 1).mean() == best
    with pytest.raises(PadimError, match="both normal and anomalous"):
        target_recall_threshold(np.ones(4), np.arange(4.0), 0.9)


def test_intervals_say_how_little_42_images_show():
    lo, hi = clopper_pearson(0, 42)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 42))
    assert clopper_pearson(42, 42)[1] == 1.0
    assert 360 <= images_to_show(0.01) <= 370
    good = np.linspace(0, 1, 42)
    point = measured_point(
        "fpr-0.01",
        target_fpr_threshold(good, 0.01),
        "mahalanobis",
        "target",
        "42 good",
        good,
        target={"fpr": 0.01},
    )
    assert point.false_alarms is not None and point.false_alarms["count"] == 0
    assert point.warning is not None and "cannot pin a 1.00%" in point.warning
    assert "0/42" in point.describe()
    enough = np.linspace(0, 1, 2000)
    ok = measured_point(
        "p",
        target_fpr_threshold(enough, 0.05),
        "mahalanobis",
        "t",
        "d",
        enough,
        target={"fpr": 0.05},
    )
    assert ok.warning is None
