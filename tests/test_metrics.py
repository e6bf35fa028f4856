import numpy as np
import pytest

from padim.errors import PadimError
from padim.metrics import f1_optimal_threshold, image_auroc, pixel_auroc


def test_image_auroc_by_hand():
    # Pairs (anomalous, normal): 3 anomalous x 2 normal = 6; ranked correctly in 5, one tie.
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.5, 0.5, 0.7, 0.9]
    assert image_auroc(labels, scores) == pytest.approx(5.5 / 6)


def test_pixel_auroc_pools_all_pixels():
    masks = np.zeros((2, 2, 2), bool)
    masks[1, 0, 0] = True
    maps = np.array([[[0.1, 0.2], [0.3, 0.4]], [[0.9, 0.5], [0.6, 0.0]]])
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    maps[0, 0, 0] = 0.95  # one normal pixel above the anomalous one: 1 of 7 pairs wrong
    assert pixel_auroc(masks, maps) == pytest.approx(6 / 7)


def test_missing_class_is_a_clear_error():
    with pytest.raises(PadimError, match="no anomalous"):
        image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(PadimError, match="no normal"):
        pixel_auroc(np.ones((1, 2, 2), bool), np.zeros((1, 2, 2)))


def test_f1_optimal_threshold_is_the_brute_force_best():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(size=60) + labels
    thr = f1_optimal_threshold(labels, scores)

    def f1(t):
        pred = scores > t
        tp = (pred & (labels == 1)).sum()
        return 2 * tp / (pred.sum() + labels.sum())

    best = max(f1(t) for t in np.concatenate([scores, [scores.min() - 1]]))
    assert f1(thr) == pytest.approx(best)
