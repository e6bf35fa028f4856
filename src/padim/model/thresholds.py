"""`Thresholds`: a model's thresholds and named operating points, with the data they rest on.

One object owns this state (the current threshold, one per score mode, the operating points,
the normalised score's spreads, the held-out good scores) and every rule that changes it
(quantile of held-out scores, F1, target recall, target false-alarm rate, a value, a re-estimate
after `update`). `Padim`, the model file, the exported scorers and the service all read and
change thresholds through it, so a threshold is resolved one way everywhere. Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from padim.errors import PadimError
from padim.model.calibration import (
    OperatingPoint,
    f1_optimal_threshold,
    measured_point,
    quantile_threshold,
    target_fpr_threshold,
    target_recall_threshold,
)
from padim.normalise import ScoreScale
from padim.options import SCORE_MODES

STALE = "chosen before images were added with padim update: calibrate it again"
HELD_OUT = "held-out good training images"  # the data of thresholds an update re-estimates


@dataclass
class Thresholds:
    """The thresholds of one model scoring with `score_mode`.

    `current` is the threshold in use (None before a fit); `by_mode` the calibrated one of
    every score mode; `points` the named operating points and `active` the one `current`
    comes from; `scales` the spread of the held-out good scores per mode (the normalised
    score's width); `holdout_scores` those scores per mode.
    """

    score_mode: str
    current: float | None = None
    source: str | None = None
    by_mode: dict[str, float] = field(default_factory=dict)
    points: dict[str, OperatingPoint] = field(default_factory=dict)
    active: str | None = None
    scales: dict[str, float] = field(default_factory=dict)
    holdout_scores: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading

    def value(self, override: float | None = None) -> float:
        """`override`, else the current threshold (an error when there is none)."""
        if override is not None:
            return float(override)
        if self.current is None:
            raise PadimError("the model has no threshold: fit it or set one")
        return self.current

    def resolve(self, threshold: float | None = None, name: str | None = None) -> float:
        """A given threshold, a named operating point's, or the current one."""
        if name is None:
            return self.value(threshold)
        if threshold is not None:
            raise PadimError("give either --threshold or --operating-point, not both")
        return self.point(name).threshold

    def point(self, name: str) -> OperatingPoint:
        """The named operating point, usable with the current score mode."""
        point = self.points.get(name)
        if point is None:
            known = ", ".join(sorted(self.points)) or "none"
            raise PadimError(f"no operating point {name!r} in this model (it has: {known})")
        if point.score_mode != self.score_mode:
            raise PadimError(
                f"operating point {name!r} was chosen for score mode {point.score_mode}, "
                f"not {self.score_mode}"
            )
        return point

    def usable(self) -> dict[str, float]:
        """The operating points of the current score mode, by name."""
        return {n: p.threshold for n, p in self.points.items() if p.score_mode == self.score_mode}

    def scale(self) -> ScoreScale:
        """The normalised score's mapping at the current threshold (see `padim.normalise`)."""
        return ScoreScale.of(self.value(), self.scales.get(self.score_mode))

    # ------------------------------------------------------------------ changing

    def activate(self, point: OperatingPoint) -> None:
        """Store `point` under its name and make it the current threshold."""
        self.points[point.name] = point
        self.current = point.threshold
        self.by_mode[point.score_mode] = point.threshold
        self.source = point.describe()
        self.active = point.name

    def add(self, point: OperatingPoint) -> None:
        """Store `point` (replacing one of that name) and make it current; it must be for the
        current score mode."""
        if point.score_mode != self.score_mode:
            raise PadimError(
                f"operating point for score mode {point.score_mode}, the model scores with "
                f"{self.score_mode}"
            )
        self.activate(point)

    def use(self, name: str) -> None:
        """Make a stored operating point the current threshold."""
        self.activate(self.point(name))

    def set_mode(self, mode: str) -> None:
        """Score with `mode`: its calibrated threshold becomes current."""
        if mode not in self.by_mode:
            raise PadimError(
                f"this model has no calibrated threshold for score mode {mode}: "
                "re-fit it with this padim"
            )
        self.score_mode = mode
        self.current = float(self.by_mode[mode])
        same = [n for n, p in self.usable().items() if p == self.current]
        self.active = same[0] if same else None

    def set_value(self, value: float, source: str = "set by user", name: str = "manual") -> None:
        """Use `value` as the current threshold (operating point `name`, chosen by `source`)."""
        if not np.isfinite(value):
            raise PadimError(f"threshold must be a finite number, got {value}")
        self.add(OperatingPoint(name, float(value), self.score_mode, source, "no data"))

    # ------------------------------------------------------------------ calibration rules

    def from_holdout(self, scores: dict[str, np.ndarray], quantile: float, data: str) -> None:
        """From the held-out good scores of every mode: the quantile thresholds, the spreads,
        and the "fit" operating point (made current)."""
        self.holdout_scores = {m: np.asarray(v, np.float64) for m, v in scores.items()}
        for mode, values in self.holdout_scores.items():
            self.by_mode[mode] = quantile_threshold(values, quantile)
            self.scales[mode] = float(values.std())
        mode = self.score_mode
        scores_now = self.holdout_scores[mode]
        rule = f"quantile {quantile} of the scores"
        self.activate(measured_point("fit", self.by_mode[mode], mode, rule, data, scores_now))

    def f1(self, scores: np.ndarray, labels: np.ndarray, name: str = "f1") -> OperatingPoint:
        """The F1-optimal threshold of labelled scores (label 1 = anomalous), made current."""
        thr = f1_optimal_threshold(labels, scores)
        return self._labelled(name, thr, "F1-optimal", scores, labels)

    def recall(
        self, scores: np.ndarray, labels: np.ndarray, recall: float, name: str | None = None
    ) -> OperatingPoint:
        """The threshold finding at least `recall` of the anomalous images with the best
        precision, on labelled scores; made current."""
        thr = target_recall_threshold(labels, scores, recall)
        rule = f"target recall {recall:g}"
        target = {"recall": recall}
        return self._labelled(name or f"recall-{recall:g}", thr, rule, scores, labels, target)

    def fpr(
        self,
        fpr: float,
        good_scores: np.ndarray | None = None,
        data: str | None = None,
        name: str | None = None,
    ) -> OperatingPoint:
        """The lowest threshold flagging at most `fpr` of good images: `good_scores` (described
        by `data`), or the held-out good scores kept in the model; made current."""
        mode = self.score_mode
        if good_scores is None:
            if mode not in self.holdout_scores:
                raise PadimError(
                    "this model keeps no held-out good scores (written by an older padim): "
                    "give a folder of good images"
                )
            good_scores = self.holdout_scores[mode]
            data = f"{len(good_scores)} {HELD_OUT}"
        good_scores = np.asarray(good_scores, np.float64)
        point = measured_point(
            name or f"fpr-{fpr:g}",
            target_fpr_threshold(good_scores, fpr),
            mode,
            f"target false-alarm rate {fpr:g}",
            data or f"{len(good_scores)} good images",
            good_scores,
            target={"fpr": fpr},
        )
        self.add(point)
        return point

    def _labelled(
        self,
        name: str,
        threshold: float,
        rule: str,
        scores: np.ndarray,
        labels: np.ndarray,
        target: dict[str, float] | None = None,
    ) -> OperatingPoint:
        scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
        data = f"{len(labels)} labelled validation images"
        good, bad = scores[labels == 0], scores[labels == 1]
        point = measured_point(name, threshold, self.score_mode, rule, data, good, bad, target)
        self.add(point)
        return point

    def after_update(self, new_scores: dict[str, np.ndarray], quantile: float) -> None:
        """Pool new held-out good scores with the kept ones and recompute what rests on them:
        the quantile thresholds, the spreads and the operating points chosen on held-out
        images; points chosen on labelled data keep their thresholds with a warning."""
        pooled = {
            m: np.concatenate([self.holdout_scores.get(m, np.empty(0)), new_scores.get(m, [])])
            for m in SCORE_MODES
        }
        if not all(v.size for v in pooled.values()):
            return  # nothing held out, ever: keep the thresholds as they are
        current = self.active
        self.from_holdout(pooled, quantile, f"{pooled[self.score_mode].size} {HELD_OUT}")
        for name, point in self.points.items():  # "fit" is recomputed already
            fpr = (point.target or {}).get("fpr")
            if name == "fit":
                continue
            if fpr is not None and point.data.endswith(HELD_OUT):
                good = pooled[point.score_mode]
                self.points[name] = measured_point(
                    name,
                    target_fpr_threshold(good, fpr),
                    point.score_mode,
                    point.rule,
                    f"{good.size} {HELD_OUT}",
                    good,
                    target=point.target,
                )
            else:
                point.warning = STALE
        if current is not None and current in self.points:
            self.activate(self.points[current])

    # ------------------------------------------------------------------ JSON

    def to_info(self) -> dict[str, Any]:
        """The JSON side (a model file's `info` keys; the held-out scores are tensors)."""
        out: dict[str, Any] = {}
        if self.source is not None:
            out["threshold_source"] = self.source
        if self.by_mode:
            out["thresholds"] = dict(self.by_mode)
        if self.scales:
            out["score_scales"] = dict(self.scales)
        if self.points:
            out["operating_points"] = {k: p.to_dict() for k, p in self.points.items()}
            out["operating_point"] = self.active
        return out

    @classmethod
    def from_info(cls, info: dict[str, Any], threshold: Any, score_mode: str) -> Thresholds:
        """Rebuild from a model file's or an export's `info` and threshold (older files: one
        threshold, the fitted mode's spread in the score summary)."""
        out = cls(score_mode, None if threshold is None else float(threshold))
        out.source = info.get("threshold_source")
        out.by_mode = {k: float(v) for k, v in (info.get("thresholds") or {}).items()}
        if not out.by_mode and out.current is not None:  # files before format 3
            out.by_mode = {score_mode: out.current}
        scales = info.get("score_scales")
        spread = (info.get("good_score_summary") or {}).get("std")
        if isinstance(scales, dict):
            out.scales = {k: float(v) for k, v in scales.items()}
        if score_mode not in out.scales and spread:  # older files: the fitted mode's spread
            out.scales[score_mode] = float(spread)
        points = info.get("operating_points") or {}
        out.points = {
            k: OperatingPoint.from_dict(v) for k, v in points.items() if isinstance(v, dict)
        }
        active = info.get("operating_point")
        out.active = active if active in out.points else None
        return out
