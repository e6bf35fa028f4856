import numpy as np
import pytest

from padim.errors import PadimError
from padim.evaluation.metrics import image_auroc, pixel_auroc
from padim.model.calibration import f1_optimal_threshold


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


# ----------------------------------------------------------------------------- the full suite
from scipy import ndimage  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_auc_score  # noqa: E402

from padim.evaluation.metrics import (  # noqa: E402
    aupro,
    balanced_accuracy,
    best_f1,
    f1_at,
    metric_suite,
    per_type_image_auroc,
    region_recall,
)


def test_aupro_hand_computed_single_region():
    # One 1x10 image: region = pixels 0-1; scores ranked N A N A N N N N N N.
    masks = np.zeros((1, 1, 10), bool)
    masks[0, 0, :2] = True
    maps = np.array([[[0.9, 0.5, 1.0, 0.8, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03]]])
    # Curve (FPR, PRO): (0,0) (1/8,0) (1/8,.5) (2/8,.5) (2/8,1) then PRO stays 1.
    # Area to 0.3: 0.125*0.5 + 0.05*1 = 0.1125, normalised: 0.375.
    assert aupro(masks, maps) == pytest.approx(0.375)


def test_aupro_weights_regions_equally_across_images():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, :2, :2] = True  # 4-pixel region, found first
    masks[1, 5, 5] = True  # 1-pixel region, scored below every normal pixel
    maps = np.full((2, 6, 6), 0.5)
    maps[0, :2, :2] = 1.0
    maps[1, 5, 5] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_perfect_and_never_above_one():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, masks.astype(float) + 1e-3 * np.arange(64).reshape(1, 8, 8)) <= 1.0


def test_aupro_diagonal_neighbours_are_one_region():
    masks = np.zeros((1, 7, 7), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # 8-connected: one region of 2 pixels, half found
    masks[0, 5, 4:6] = True  # a second region, fully found
    maps = np.zeros((1, 7, 7))
    maps[0, 1, 1] = maps[0, 5, 4] = maps[0, 5, 5] = 1.0
    # PRO = (1/2 + 1) / 2 = 0.75 at FPR 0, then everything else ties at 0 (FPR 1, PRO 1):
    # at FPR 0.3 the PRO is 0.825, area (0.75 + 0.825) / 2 * 0.3, normalised 0.7875.
    # With 4-connectivity (three regions) it would be (2/3 + 0.7667) / 2 = 0.7167.
    assert aupro(masks, maps) == pytest.approx(0.7875)


def _aupro_brute_force(masks, maps, limit=0.3):
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, lab == k) for i, lab in enumerate(labelled) for k in range(1, lab.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= limit
    f, p = list(fpr[keep]), list(pro[keep])
    nxt = int(np.argmax(fpr > limit)) if (fpr > limit).any() else None
    if nxt is not None:
        p.append(np.interp(limit, [fpr[nxt - 1], fpr[nxt]], [pro[nxt - 1], pro[nxt]]))
        f.append(limit)
    return np.trapezoid(p, f) / limit


def _aupro_cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """(masks, maps, FPR limits): float64 maps with ties on purpose at the default limit;
    float32 maps (as models make them) at three limits."""
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:12, 10:15] = True
    masks[1, 1:3, 1:3] = True
    ties = (masks, rng.random((3, 16, 16)).round(2) + masks * 0.3, (0.3,))
    rng = np.random.default_rng(5)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 3:9, 4:12] = True
    masks[0, 15:18, 15:22] = True
    masks[2, 10:20, 2:5] = True
    maps = np.round(rng.normal(masks * 1.5, 1.0), 2).astype(np.float32)
    return [ties, (masks, maps, (0.05, 0.3, 1.0))]


@pytest.mark.parametrize("case", [0, 1])
def test_aupro_matches_a_brute_force_computation(case):
    masks, maps, limits = _aupro_cases()[case]
    for limit in limits:
        assert aupro(masks, maps, limit) == pytest.approx(
            _aupro_brute_force(masks, maps, limit), abs=1e-9
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
    assert suite["aupro"] == pytest.approx(_aupro_brute_force(masks, maps), abs=1e-6)
    assert suite["region_recall"] == region_recall(masks, maps, 1.5)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    assert suite["pixel_f1"] == pytest.approx(np.max(2 * p * r / np.clip(p + r, 1e-12, None)))
    assert suite["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_aupro_without_regions_or_normals():
    with pytest.raises(PadimError, match=r"no anomalous|there are none"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(PadimError, match="normal pixels"):
        aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)))


def test_f1_and_balanced_accuracy_by_hand():
    labels = np.array([1, 1, 1, 0, 0])
    pred = np.array([1, 1, 0, 1, 0])
    # TP 2, FP 1, FN 1: F1 = 4 / (4 + 2); TPR 2/3, TNR 1/2
    assert f1_at(labels, pred) == pytest.approx(4 / 6)
    assert balanced_accuracy(labels, pred) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert best_f1(labels, [0.9, 0.8, 0.7, 0.1, 0.2]) == pytest.approx(1.0)


def test_per_type_auroc_shows_which_defect_is_missed():
    types = ["good", "good", "crack", "crack", "stain", "stain"]
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.2, 0.4, 0.9, 0.8, 0.1, 0.3])
    res = per_type_image_auroc(types, labels, scores)
    assert res == {"crack": 1.0, "stain": pytest.approx(0.25)}


def test_suite_on_a_set_without_anomalies_reports_instead_of_crashing():
    res = metric_suite(
        np.zeros(4),
        np.array([0.1, 0.2, 0.3, 0.4]),
        threshold=0.25,
        masks=np.zeros((4, 3, 3), bool),
        maps=np.zeros((4, 3, 3)),
        types=["good"] * 4,
    )
    assert res["image_auroc"] is None and res["aupro"] is None
    assert any("no anomalous" in n for n in res["notes"])
    assert not any(isinstance(v, float) and np.isnan(v) for v in res.values())


def test_suite_values_are_consistent():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 5 + [1] * 5)
    masks = np.zeros((10, 8, 8), bool)
    masks[5:, 2:5, 2:5] = True
    maps = rng.random((10, 8, 8)) + masks
    scores = maps.reshape(10, -1).max(axis=1)
    res = metric_suite(labels, scores, 1.2, masks, maps, ["good"] * 5 + ["x"] * 5)
    assert res["image_auroc"] == pytest.approx(image_auroc(labels, scores))
    assert 0 <= res["aupro"] <= 1 and res["pixel_f1"] >= res["pixel_f1_at_threshold"]
    assert res["per_type_image_auroc"]["x"] == pytest.approx(res["image_auroc"])


def test_region_recall_counts_each_defect_once_whatever_its_size():
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:30, 2:30] = True  # a large defect, found
    masks[0, 35:37, 35:37] = True  # a 4-pixel pit, missed
    masks[1, 10:14, 10:14] = True  # a pit, a third covered: found at 0.3, not at 0.5
    maps = np.zeros((2, 40, 40), np.float32)
    maps[0, 2:30, 2:30] = 5.0
    maps[1, 10:14, 10:14] = np.where(np.arange(16).reshape(4, 4) < 6, 5.0, 0.0)
    assert region_recall(masks, maps, 1.0) == pytest.approx(2 / 3)
    assert region_recall(masks, maps, 1.0, min_overlap=0.5) == pytest.approx(1 / 3)
    assert region_recall(masks, maps, 10.0) == 0.0
    pixel_share = (masks & (maps > 1.0)).sum() / masks.sum()
    assert pixel_share > 0.95  # pixel-wise almost everything is found: the pits are not
