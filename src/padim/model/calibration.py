"""Choosing a threshold, and saying how sure we are of it.

Rules: a quantile of good images' scores (the fit's default), the F1-optimal one on labelled
data, a target false-alarm rate on good images only, a target recall (then the best precision)
on labelled data. Each becomes a named `OperatingPoint` stored in the model with its provenance
and the rates it gives on the images it was chosen on, each with a 95 % Clopper-Pearson
interval from the counts: 42 good images cannot pin a 1 % false-alarm rate, and the interval
says so. Plain numpy (curves from `padim.curves`; scipy.special for the intervals).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from padim.curves import Ranking
from padim.errors import PadimError

CONFIDENCE = 0.95


def f1_curve(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """F1 at every distinct score threshold (anomalous when score >= threshold)."""
    return Ranking(labels, np.asarray(scores, dtype=np.float64), what).f1()


def _pr_curve(
    labels: np.ndarray, scores: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return Ranking(labels, np.asarray(scores, dtype=np.float64), what).precision_recall()


def _below(threshold: float) -> float:
    """The curves predict positive for score >= t; a threshold just below t makes padim's rule
    (score > threshold) agree."""
    return float(np.nextafter(threshold, -np.inf))


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising F1 (an image is anomalous when score > threshold)."""
    f1, thresholds = f1_curve(labels, scores, "threshold calibration")
    return _below(thresholds[int(np.argmax(f1[:-1]))])


def target_recall_threshold(labels: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """The threshold with recall >= `recall` and, among those, the best precision (ties: the
    highest threshold, fewest alarms)."""
    if not 0 < recall <= 1:
        raise PadimError(f"--target-recall must be in (0, 1], got {recall}")
    precision, rec, thresholds = _pr_curve(labels, scores, "a target recall")
    ok = np.flatnonzero(rec[:-1] >= recall - 1e-12)  # the last point has no threshold
    best = ok[precision[ok] == precision[ok].max()].max()  # thresholds ascend
    return _below(thresholds[best])


def target_fpr_threshold(good_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold that flags at most `fpr` of the good images (anomalous when score >
    threshold): the (k+1)-th largest score, k = floor(fpr * n)."""
    if not 0 <= fpr < 1:
        raise PadimError(f"--target-fpr must be in [0, 1), got {fpr}")
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if scores.size == 0:
        raise PadimError("a target false-alarm rate needs good images; none")
    allowed = math.floor(fpr * scores.size + 1e-9)
    return float(scores[min(allowed, scores.size - 1)])


def quantile_threshold(good_scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of good images' scores (anomalous above it)."""
    return float(np.quantile(np.asarray(good_scores, dtype=np.float64), quantile))


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a rate seen k times in n trials (the beta
    distribution's quantiles; scipy.special, not the much heavier scipy.stats)."""
    from scipy.special import betaincinv

    alpha = 1 - confidence
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return lo, hi


def rate(k: int, n: int) -> dict[str, Any]:
    """A counted rate with its 95 % interval, JSON-ready."""
    lo, hi = clopper_pearson(k, n)
    return {"count": int(k), "of": int(n), "rate": k / n, "ci95": [round(lo, 6), round(hi, 6)]}


def images_to_show(fpr: float, confidence: float = CONFIDENCE) -> int:
    """How many good images, none flagged, put the interval's upper end at `fpr`."""
    if fpr <= 0:
        return math.inf  # type: ignore[return-value]  # never: callers print it
    return math.ceil(math.log((1 - confidence) / 2) / math.log1p(-fpr))


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (when a threshold or update was made)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def score_summary(scores: np.ndarray) -> dict[str, float]:
    """Count, range, centre, spread and upper quantiles of a set of scores."""
    q = np.quantile(scores, [0.5, 0.95, 0.99])
    return {
        "n": int(scores.size),
        "min": float(scores.min()),
        "median": float(q[0]),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "q95": float(q[1]),
        "q99": float(q[2]),
        "max": float(scores.max()),
    }


@dataclass
class OperatingPoint:
    """A named threshold with how it was chosen and what it gives on the images it was chosen
    on (rates with 95 % intervals). Stored in the model's header."""

    name: str
    threshold: float
    score_mode: str
    rule: str  # "quantile 0.99", "target false-alarm rate 0.01", "F1-optimal", ...
    data: str  # what it was chosen on
    false_alarms: dict[str, Any] | None = None  # rate() on good images
    misses: dict[str, Any] | None = None  # rate() on anomalous images
    target: dict[str, float] | None = None  # {"fpr": 0.01} or {"recall": 0.95}
    warning: str | None = None
    created: str = ""  # ISO date and time

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise PadimError(f"threshold must be a finite number, got {self.threshold}")
        if not self.created:
            self.created = now_iso()

    def describe(self) -> str:
        """One line: rule, data, rates with intervals."""
        parts = [f"{self.rule} on {self.data}"]
        for what, r in (("false alarms", self.false_alarms), ("misses", self.misses)):
            if r is not None:
                lo, hi = r["ci95"]
                parts.append(
                    f"{what} {r['count']}/{r['of']} = {r['rate']:.2%} (95 % interval "
                    f"{lo:.2%}-{hi:.2%})"
                )
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def measured_point(
    name: str,
    threshold: float,
    score_mode: str,
    rule: str,
    data: str,
    good_scores: np.ndarray | None,
    anomalous_scores: np.ndarray | None = None,
    target: dict[str, float] | None = None,
) -> OperatingPoint:
    """An operating point with its false-alarm and miss rates counted on the given scores, and
    a warning when the good images are too few to show the target false-alarm rate."""
    good = None if good_scores is None else np.asarray(good_scores, dtype=np.float64)
    bad = None if anomalous_scores is None else np.asarray(anomalous_scores, dtype=np.float64)
    point = OperatingPoint(
        name,
        float(threshold),
        score_mode,
        rule,
        data,
        false_alarms=None
        if good is None or not good.size
        else rate(int((good > threshold).sum()), good.size),
        misses=None
        if bad is None or not bad.size
        else rate(int((bad <= threshold).sum()), bad.size),
        target=target,
    )
    fpr = (target or {}).get("fpr")
    if fpr is not None and point.false_alarms is not None:
        n, hi = point.false_alarms["of"], point.false_alarms["ci95"][1]
        if hi > 2 * fpr or fpr * n < 1:
            point.warning = (
                f"{n} good images cannot pin a {fpr:.2%} false-alarm rate: the true rate may be "
                f"up to {hi:.2%} (95 %); about {images_to_show(fpr):,} good images with none "
                "flagged would show it"
            )
    return point
