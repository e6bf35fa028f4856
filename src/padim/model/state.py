"""`ModelState`: everything a fitted model is, as one plain object.

The fit (`padim.model.fitting`) produces it, the model file (`padim.model.modelfile`) writes and
reads it, and `Padim` holds its parts as learned attributes (`config_`, `net_`, `calibration_`,
`training_`, `statistics_`). Nothing here imports the estimator, so no import circle remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from padim.core.net import PadimNet
from padim.core.statistics import GaussianStats
from padim.data.align import Aligner
from padim.model.config import PadimConfig, TrainingSummary
from padim.model.sizing import Sizing
from padim.model.thresholds import Thresholds


@dataclass
class ModelState:
    """A fitted model: its resolved config (a concrete input size), the torch model, the
    thresholds and operating points, what the fit learned about its data, and (when kept) the
    training sums `update` adds new images to."""

    config: PadimConfig
    net: PadimNet
    calibration: Thresholds
    training: TrainingSummary | None = None
    statistics: GaussianStats | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    aligner: Aligner | None = None  # the registration onto a reference part, when it aligns

    @property
    def sizing(self) -> Sizing:
        return Sizing(self.config)

    @property
    def keeps_statistics(self) -> bool:
        """Whether the model file holds the training statistics (asked for, and present)."""
        return self.statistics is not None and self.config.statistics == "keep"

    def info(self) -> dict:
        """The learned state as one JSON-ready dict (the model file's `info`)."""
        out = self.training.to_dict() if self.training is not None else {}
        return {**out, **self.calibration.to_info()}
