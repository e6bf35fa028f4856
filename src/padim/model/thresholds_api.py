"""`ThresholdsAPI`: the estimator's threshold attributes and methods, each a view of (or a call
into) its `Thresholds` object, so `Padim` reads like scikit-learn (`model.threshold_`,
`model.calibrate_fpr(0.01)`) while one object owns the state and the rules."""

from __future__ import annotations

import numpy as np

from padim.model.calibration import OperatingPoint
from padim.model.config import PadimConfig
from padim.model.thresholds import Thresholds
from padim.normalise import ScoreScale


class ThresholdsAPI:
    """Mixed into `Padim`: `calibration_` (a `Thresholds`) and its views."""

    calibration_: Thresholds

    @property
    def config(self) -> PadimConfig:
        raise NotImplementedError

    @property
    def calibration(self) -> Thresholds:
        """`calibration_`, made empty on first use by an unfitted model."""
        calibration = getattr(self, "calibration_", None)
        if calibration is None:
            calibration = self.calibration_ = Thresholds(self.config.score_mode)
        return calibration

    threshold_ = property(
        lambda self: self.calibration.current,
        lambda self, v: setattr(self.calibration, "current", v),
        doc="Images (and pixels) scoring above it are anomalous, for the current score mode.",
    )
    thresholds_ = property(
        lambda self: self.calibration.by_mode,
        lambda self, v: setattr(self.calibration, "by_mode", v),
        doc="The calibrated threshold of every score mode.",
    )
    threshold_source_ = property(
        lambda self: self.calibration.source,
        lambda self, v: setattr(self.calibration, "source", v),
        doc="How `threshold_` was chosen.",
    )
    operating_points_ = property(
        lambda self: self.calibration.points,
        lambda self, v: setattr(self.calibration, "points", v),
        doc="Named thresholds with their rule, data and measured rates.",
    )
    operating_point_ = property(
        lambda self: self.calibration.active,
        lambda self, v: setattr(self.calibration, "active", v),
        doc="The name of the operating point `threshold_` comes from.",
    )
    score_scales_ = property(
        lambda self: self.calibration.scales,
        lambda self, v: setattr(self.calibration, "scales", v),
        doc="Per score mode, the spread of the held-out good scores.",
    )
    holdout_scores_ = property(
        lambda self: self.calibration.holdout_scores,
        lambda self, v: setattr(self.calibration, "holdout_scores", v),
        doc="Per score mode, the held-out good images' scores.",
    )

    @property
    def score_scale(self) -> ScoreScale:
        """The normalised score's mapping at the current threshold (see `padim.normalise`)."""
        return self.calibration.scale()

    def threshold_for(self, threshold: float | None = None, name: str | None = None) -> float:
        """A given threshold, a named operating point's, or the current one."""
        return self.calibration.resolve(threshold, name)

    def operating_point(self, name: str) -> OperatingPoint:
        """The named operating point, usable with the current score mode."""
        return self.calibration.point(name)

    def use_operating_point(self, name: str) -> None:
        """Make a stored operating point the model's threshold."""
        self.calibration.use(name)

    def add_operating_point(self, point: OperatingPoint) -> None:
        """Store `point` under its name (replacing one of that name) and make it current."""
        self.calibration.add(point)

    def set_threshold(
        self, value: float, source: str = "set by user", name: str = "manual"
    ) -> None:
        """Use `value` as the current score mode's threshold (operating point `name`)."""
        self.calibration.set_value(value, source, name)

    def calibrate(self, scores: np.ndarray, labels: np.ndarray, name: str = "f1") -> float:
        """Set the F1-optimal threshold of labelled validation scores (label 1 = anomalous);
        returns it."""
        return self.calibration.f1(scores, labels, name).threshold

    def calibrate_recall(
        self, scores: np.ndarray, labels: np.ndarray, recall: float, name: str | None = None
    ) -> OperatingPoint:
        """The threshold finding at least `recall` of the anomalous images with the best
        precision, on labelled validation scores; made current."""
        return self.calibration.recall(scores, labels, recall, name)

    def calibrate_fpr(
        self,
        fpr: float,
        good_scores: np.ndarray | None = None,
        data: str | None = None,
        name: str | None = None,
    ) -> OperatingPoint:
        """The lowest threshold flagging at most `fpr` of good images: `good_scores` (described
        by `data`), or the held-out good training images kept in the model; made current. Its
        `warning` says when the images are too few to show that rate."""
        return self.calibration.fpr(fpr, good_scores, data, name)
