"""From a score and an anomaly map to what a line acts on: the verdict, the normalised score
and the defect regions in the photo's own pixels.

`decide` is the one decision every front end makes (`Padim.predict`, `padim predict`, bulk
jobs, `padim watch`, the service), so a threshold, a region or a normalised score means the
same thing everywhere. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from padim.data.preprocess import Preprocess
from padim.data.regions import Region
from padim.normalise import ScoreScale


@dataclass
class Decision:
    """One image's verdict at `threshold`, its normalised score and its defect regions
    (largest peak first, in pixels of the image itself)."""

    score: float
    threshold: float
    is_anomalous: bool
    normalised_score: float
    regions: list[Region]


def decide(
    score: float,
    anomaly_map: np.ndarray,
    threshold: float,
    scale: ScoreScale,
    geometry: Preprocess,
    image_size: tuple[int, int],
    min_area: int = 0,
) -> Decision:
    """The verdict (score > threshold), the normalised score on `scale` (already at
    `threshold`) and the regions of the (H, W) map at the model input, brought through
    `geometry` to the `image_size` (width, height) photo; regions under `min_area` of its
    pixels are dropped."""
    regions = geometry.regions(anomaly_map, threshold, image_size, min_area, scale)
    return Decision(score, threshold, bool(score > threshold), scale.one(score), regions)


@dataclass
class Prediction:
    """One image's result from `Padim.predict`. `anomaly_map` and `mask` are at the model's
    input geometry; `regions` (largest peak first) are in pixels of the image (`image_size`)."""

    score: float
    is_anomalous: bool
    threshold: float
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool: anomaly_map > threshold
    path: str | None = None
    normalised_score: float = float("nan")  # in [0, 1], 0.5 at the threshold (ScoreScale)
    regions: list[Region] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # (width, height) of the image scored

    @property
    def label(self) -> int:
        return int(self.is_anomalous)

    def to_dict(self) -> dict[str, Any]:
        """The verdict, scores and regions as JSON-ready values (no maps)."""
        return {
            "path": self.path,
            "score": self.score,
            "normalised_score": self.normalised_score,
            "threshold": self.threshold,
            "is_anomalous": self.is_anomalous,
            "image_size": None if self.image_size is None else list(self.image_size),
            "regions": [r.to_dict() for r in self.regions],
        }
