"""Detection and localisation metrics: AUROC, F1, balanced accuracy, AUPRO (MVTec AD protocol),
per-region recall."""

from __future__ import annotations

import numpy as np

from padim.curves import Ranking, area_up_to, check_both_classes
from padim.data.regions import find_regions, label_mask
from padim.errors import PadimError
from padim.model.calibration import f1_curve


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores (label 1 = anomalous)."""
    return Ranking(labels, np.asarray(scores, dtype=np.float64), "image AUROC").auroc()


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels of all test images pooled (MVTec AD protocol)."""
    return _pixel_ranking(masks, np.asarray(maps, dtype=np.float32)).auroc()


def _pixel_ranking(
    masks: np.ndarray,
    maps: np.ndarray,
    what: str = "pixel AUROC",
    regions: np.ndarray | None = None,
) -> Ranking:
    """Pooled pixels ranked once; maps keep their precision (float32 from a model)."""
    maps = np.asarray(maps)
    return Ranking(
        np.asarray(masks),
        maps if maps.dtype == np.float64 else maps.astype(np.float32, copy=False),
        what,
        regions,
    )


def f1_at(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of boolean predictions (0 when nothing is predicted and nothing is anomalous)."""
    labels = np.asarray(labels).astype(bool).ravel()
    predicted = np.asarray(predicted).astype(bool).ravel()
    tp = int((labels & predicted).sum())
    denom = int(labels.sum()) + int(predicted.sum())
    return 2 * tp / denom if denom else 0.0


def best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """The highest F1 over all thresholds (anomalous when score >= threshold)."""
    f1, _ = f1_curve(labels, scores, "F1")
    return float(f1.max())


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates."""
    labels = np.asarray(labels).astype(bool).ravel()
    predicted = np.asarray(predicted).astype(bool).ravel()
    check_both_classes(labels, "balanced accuracy")
    tpr = (predicted & labels).sum() / labels.sum()
    tnr = (~predicted & ~labels).sum() / (~labels).sum()
    return float((tpr + tnr) / 2)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised by it (MVTec AD).

    Every connected ground-truth region (8-connectivity) counts equally: at each threshold, PRO
    is the mean over regions of the fraction of the region's pixels above the threshold, and
    FPR is the fraction of all normal pixels above it. The curve is integrated with the
    trapezoidal rule up to the limit (interpolated there); the result is in [0, 1].
    """
    masks, maps = _stacked(masks, maps)
    regions, n_regions = label_regions(masks)
    if n_regions == 0:
        raise PadimError("AUPRO needs anomalous regions in the ground truth; there are none")
    if masks.all():
        raise PadimError("AUPRO needs normal pixels in the ground truth; there are none")
    return _aupro(_pixel_ranking(masks, maps, "AUPRO", regions), n_regions, fpr_limit)


def _aupro(ranking: Ranking, n_regions: int, fpr_limit: float) -> float:
    fpr, pro = ranking.overlap_curve(n_regions)
    return area_up_to(fpr, pro, fpr_limit)


def _stacked(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks).astype(bool), np.asarray(maps)
    if masks.shape != maps.shape:
        raise PadimError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    return (masks[None], maps[None]) if masks.ndim == 2 else (masks, maps)


REGION_MIN_OVERLAP = 0.3  # a defect region counts as found when the mask covers this share


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions (8-connectivity) of every mask, numbered 1..n across the stack."""
    regions = np.zeros(masks.shape, dtype=np.int32)
    n_regions = 0
    for i, mask in enumerate(masks):
        lab, n = label_mask(mask)
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    return regions, n_regions


def false_regions_per_good_image(
    labels: np.ndarray, maps: np.ndarray, threshold: float, min_area: int = 0
) -> float:
    """Mean number of predicted defect regions (map > threshold, at least `min_area` pixels) on
    the good images: what an operator would be sent to look at for nothing."""
    good = np.flatnonzero(np.asarray(labels) == 0)
    if good.size == 0:
        raise PadimError("false regions per good image needs good images; none")
    return float(np.mean([len(find_regions(maps[i], threshold, min_area)) for i in good]))


def region_recall(
    masks: np.ndarray,
    maps: np.ndarray,
    threshold: float,
    min_overlap: float = REGION_MIN_OVERLAP,
    labelled: tuple[np.ndarray, int] | None = None,
) -> float:
    """Share of the ground-truth defect regions (8-connected, every region counts once, small or
    large) of which the predicted mask (map > threshold) covers at least `min_overlap`. Pixel
    AUROC is dominated by large defects; this counts a 50-pixel pit like a scratch.
    `labelled`: the masks' regions when they are already labelled."""
    masks, maps = _stacked(masks, maps)
    regions, n = labelled if labelled is not None else label_regions(masks)
    if n == 0:
        raise PadimError("region recall needs anomalous regions in the ground truth; none")
    flat = regions.ravel()
    hit = np.asarray(maps).ravel() > threshold
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    covered = np.bincount(flat[hit], minlength=n + 1)[1:]
    return float(np.mean(covered >= min_overlap * sizes))


def per_type_image_auroc(types: list[str], labels: np.ndarray, scores: np.ndarray) -> dict:
    """Image AUROC of each defect type against the good images (which defects are missed)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores)
    good = labels == 0
    out: dict[str, float | None] = {}
    for t in sorted({t for t, lab in zip(types, labels, strict=True) if lab == 1}):
        sel = good | np.array([x == t for x in types])
        out[t] = Ranking(labels[sel], scores[sel]).auroc() if good.any() else None
    return out


def metric_suite(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    types: list[str] | None = None,
    min_area: int = 0,
) -> dict:
    """Every metric that is defined for this test set; undefined ones are None, with a note
    saying why (a set with no anomalous or no normal images, or no masks). `min_area`: the
    smallest predicted region counted as a false region."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores > threshold
    out: dict = {"notes": []}

    def attempt(name: str, fn) -> None:
        try:
            out[name] = fn()
        except PadimError as exc:
            out[name] = None
            out["notes"].append(f"{name}: {exc}")

    attempt("image_auroc", lambda: image_auroc(labels, scores))
    attempt("image_f1", lambda: best_f1(labels, scores))
    out["image_f1_at_threshold"] = f1_at(labels, predicted)
    attempt("image_balanced_accuracy", lambda: balanced_accuracy(labels, predicted))
    if types is not None:
        out["per_type_image_auroc"] = per_type_image_auroc(types, labels, scores)
        if not (labels == 0).any():
            out["notes"].append("per_type_image_auroc: no normal test images")
    if maps is not None:
        attempt(
            "false_regions_per_good_image",
            lambda: false_regions_per_good_image(labels, maps, threshold, min_area),
        )
    if masks is None or maps is None:
        for name in ("pixel_auroc", "pixel_f1", "pixel_f1_at_threshold", "aupro", "region_recall"):
            out[name] = None
        out["notes"].append("pixel metrics: no ground-truth masks")
        return out
    # one sort of the pooled pixels for AUROC, F1 and AUPRO; one labelling of the regions
    masks, maps = _stacked(masks, maps)
    ranking: Ranking | None = None

    def ranked() -> Ranking:
        nonlocal ranking
        ranking = ranking or _pixel_ranking(masks, maps, regions=labelled[0])
        return ranking

    labelled = label_regions(masks)
    attempt("pixel_auroc", lambda: ranked().auroc())
    attempt("pixel_f1", lambda: float(ranked().f1()[0].max()))
    out["pixel_f1_at_threshold"] = f1_at(masks, maps > threshold)
    attempt("aupro", lambda: _aupro(ranked(), labelled[1], 0.3))
    attempt("region_recall", lambda: region_recall(masks, maps, threshold, labelled=labelled))
    return out


def format_metric(value: float | None, digits: int = 3) -> str:
    """A metric for people: fixed digits, "n/a" when it is undefined on the test set."""
    return "n/a" if value is None else f"{value:.{digits}f}"
