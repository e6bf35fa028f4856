"""From a score and an anomaly map to what a line acts on: the verdict, the normalised score
and the defect regions in the photo's own pixels.

`decide` is the one decision every front end makes (`Padim.predict`, `padim predict`, bulk
jobs, `padim watch`, the service), so a threshold, a region or a normalised score means the
same thing everywhere. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from padim.data.regions import Region
from padim.normalise import ScoreScale

GOOD, ANOMALOUS, CANNOT_ALIGN = "good", "anomalous", "cannot_align"


class Geometry(Protocol):
    """How a map at the model input gets onto the photo: `Preprocess` (resize and crop), or
    `padim.data.align.AlignedGeometry` (and then through the photo's alignment)."""

    def map_to_image(self, amap: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray: ...

    def uninspected(self, image_wh: tuple[int, int]) -> np.ndarray | None: ...

    def regions(
        self,
        amap: np.ndarray,
        threshold: float,
        image_wh: tuple[int, int],
        min_area: int = 0,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[Region]: ...


class Alignment(Protocol):
    """What a decision needs of a photo's alignment (`padim.data.align.Transform`)."""

    @property
    def reason(self) -> str: ...

    @property
    def ok(self) -> bool: ...


@dataclass
class Decision:
    """One image's verdict at `threshold` ("good", "anomalous", or "cannot_align" with its
    `reason`), its normalised score and its defect regions (largest peak first, in pixels of
    the image itself)."""

    score: float
    threshold: float
    is_anomalous: bool
    normalised_score: float
    regions: list[Region]
    verdict: str = GOOD
    reason: str | None = None


def decide(
    score: float,
    anomaly_map: np.ndarray,
    threshold: float,
    scale: ScoreScale,
    geometry: Geometry,
    image_size: tuple[int, int],
    min_area: int = 0,
    alignment: Alignment | None = None,
) -> Decision:
    """The verdict (score > threshold), the normalised score on `scale` (already at
    `threshold`) and the regions of the (H, W) map at the model input, brought through
    `geometry` to the `image_size` (width, height) photo; regions under `min_area` of its
    pixels are dropped. A photo that could not be aligned is never good: its verdict is
    "cannot_align" (counted as anomalous), with the reason."""
    regions = geometry.regions(anomaly_map, threshold, image_size, min_area, scale)
    if alignment is not None and not alignment.ok:
        return Decision(
            score, threshold, True, scale.one(score), regions, CANNOT_ALIGN, alignment.reason
        )
    anomalous = bool(score > threshold)
    verdict = ANOMALOUS if anomalous else GOOD
    return Decision(score, threshold, anomalous, scale.one(score), regions, verdict)


@dataclass
class Prediction:
    """One image's result from `Padim.predict`. `anomaly_map` and `mask` are at the model's
    input geometry (`map_on_image` brings the map onto the photo, through its alignment when
    the model aligns); `regions` (largest peak first) are in pixels of the image
    (`image_size`); `verdict` is "good", "anomalous" or "cannot_align" (`reason` says why);
    `alignment` is the photo's transform (shift, angle, scale, quality) when it was aligned."""

    score: float
    is_anomalous: bool
    threshold: float
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool: anomaly_map > threshold
    path: str | None = None
    normalised_score: float = float("nan")  # in [0, 1], 0.5 at the threshold (ScoreScale)
    regions: list[Region] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # (width, height) of the image scored
    verdict: str = GOOD
    reason: str | None = None
    alignment: dict[str, Any] | None = None
    geometry: Geometry | None = field(default=None, repr=False)

    @property
    def label(self) -> int:
        return int(self.is_anomalous)

    def map_on_image(self) -> np.ndarray:
        """The anomaly map on the photo itself ((h, w), the photo's pixels)."""
        if self.geometry is None or self.image_size is None:
            raise ValueError("this prediction does not know its photo's geometry")
        return self.geometry.map_to_image(self.anomaly_map, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """The verdict, scores and regions as JSON-ready values (no maps)."""
        return {
            "path": self.path,
            "score": self.score,
            "normalised_score": self.normalised_score,
            "threshold": self.threshold,
            "is_anomalous": self.is_anomalous,
            "verdict": self.verdict,
            "reason": self.reason,
            "image_size": None if self.image_size is None else list(self.image_size),
            "regions": [r.to_dict() for r in self.regions],
            **({"alignment": self.alignment} if self.alignment is not None else {}),
        }
