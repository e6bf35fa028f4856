"""Normalised scores: raw anomaly scores (Mahalanobis distances, unbounded, model-specific) on a
fixed [0, 1] scale that means the same for every model.

The mapping is a logistic curve centred on the threshold, 1 / (1 + exp(-(raw - threshold) /
scale)): monotone, exactly 0.5 at the threshold (above it: anomalous), and `scale` is the spread
(standard deviation) of the held-out good images' scores, so 0.1 and 0.9 sit about 2.2 good-
score spreads below and above the threshold on every model. Heat maps are coloured on this
scale, never per image: a good part is the same blue on every picture. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FALLBACK_SCALE = 0.1  # of the threshold, for models that recorded no good-score spread
MAX_EXPONENT = 60.0  # exp(60) ~ 1e26: beyond it the logistic is 0 or 1 in float64 anyway


@dataclass(frozen=True)
class ScoreScale:
    """Raw score -> [0, 1], 0.5 at `threshold`; `scale` in raw score units (> 0)."""

    threshold: float
    scale: float

    @classmethod
    def of(cls, threshold: float, spread: float | None) -> ScoreScale:
        """The scale for a threshold and the good scores' spread (None, zero or non-finite: a
        tenth of the threshold, so old model files still get a fixed scale)."""
        if spread is None or not math.isfinite(spread) or spread <= 0:
            spread = FALLBACK_SCALE * max(abs(threshold), 1e-6)
        return cls(float(threshold), float(spread))

    def __call__(self, raw: np.ndarray | float) -> np.ndarray:
        """Normalised scores, same shape as `raw`, float64."""
        z = (np.asarray(raw, dtype=np.float64) - self.threshold) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z, -MAX_EXPONENT, MAX_EXPONENT)))

    def one(self, raw: float) -> float:
        """One normalised score as a float."""
        return float(self(raw))

    def at(self, threshold: float) -> ScoreScale:
        """The same spread around another threshold (a per-request or operating-point one)."""
        return ScoreScale(float(threshold), self.scale)

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": "logistic", "threshold": self.threshold, "scale": self.scale}
