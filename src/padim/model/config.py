"""What defines a model (`PadimConfig`, stored in its file) and what fitting learned about its
training data (`TrainingSummary`); both serialise to plain JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from padim import options
from padim.errors import PadimError

if TYPE_CHECKING:
    import numpy as np

    from padim.core.factorise import Representation
    from padim.data.align import Aligner

MIN_TRAIN_IMAGES = 1
MIN_IMAGES_FOR_HOLDOUT = 5
MAX_NEIGHBOURHOOD = 8  # cells; (2K+1)^2 Gaussians per patch


@dataclass
class PadimConfig:
    """Everything that defines a fitted model's behaviour; stored in the model file."""

    backbone: str = options.BACKBONE.default
    size: int | tuple[int, int] | str = options.SIZE.default  # side, (w, h), "auto", "native"
    crop: int | tuple[int, int] | None = 224  # side, (width, height) or None
    channels: int | None = options.CHANNELS.default  # kept channels; None: the backbone's
    seed: int = options.SEED.default
    regularisation: float = options.REGULARISATION.default
    sigma: float = options.SIGMA.default
    holdout_fraction: float = options.HOLDOUT.default  # good images held out for the threshold
    threshold_quantile: float = options.THRESHOLD_QUANTILE.default  # of their scores
    covariance: str = options.COVARIANCE.default  # "full" or "minor" (padim.core.minor)
    components: int = options.COMPONENTS.default  # minor: directions kept per position
    storage: str = options.STORAGE.default  # dtype of the Gaussians in the file
    score_mode: str = options.SCORE_MODE.default  # patch score: see padim.core.scoring
    shrinkage: str = options.SHRINKAGE.default  # "ledoit-wolf": shrink each covariance
    tile: int | tuple[int, int] | None = options.TILE.default  # side or (w, h); None: no tiling
    tile_overlap: int | None = options.TILE_OVERLAP.default  # pixels
    tile_statistics: str = options.TILE_STATISTICS.default  # "location" or "shared"
    statistics: str = options.KEEP_STATISTICS.default  # "keep": training sums in the file
    embedding: str = options.EMBEDDING.default  # "random" subset or "semi-orthogonal" projection
    align: str = options.ALIGN.default  # register images onto a reference first (see data.align)
    align_max_shift: float = options.ALIGN_MAX_SHIFT.default  # fraction of the longest side
    align_max_angle: float = options.ALIGN_MAX_ANGLE.default  # degrees
    align_max_scale: float = options.ALIGN_MAX_SCALE.default  # relative
    align_min_quality: float | None = options.ALIGN_MIN_QUALITY.default  # None: learned
    neighbourhood: int = options.NEIGHBOURHOOD.default  # cells of shift tolerance (0: the paper)

    def validate(self) -> None:
        """Fail with one clear line on any value a model cannot be built with."""
        from padim.core.backbones import get_backbone
        from padim.data.preprocess import Preprocess

        spec = get_backbone(self.backbone)
        if isinstance(self.size, str):
            if self.size not in ("auto", "native"):
                raise PadimError(f"--size must be N, WxH, auto or native, got {self.size!r}")
            if self.crop is not None:
                raise PadimError(f"--size {self.size} chooses the whole input: it takes no --crop")
        else:
            pre = Preprocess(self.size, self.crop)  # validates the geometry (lists -> tuples)
            self.size, self.crop = pre.size, pre.crop
        self._validate_tiling()
        if self.channels is not None and not 1 <= self.channels <= spec.total_channels:
            raise PadimError(
                f"--channels must be between 1 and {spec.total_channels} for "
                f"{self.backbone}, got {self.channels}"
            )
        if not 0 <= self.holdout_fraction < 1:
            raise PadimError("holdout fraction must be in [0, 1)")
        if not 0 < self.threshold_quantile <= 1:
            raise PadimError("threshold quantile must be in (0, 1]")
        if not (
            math.isfinite(self.regularisation)
            and math.isfinite(self.sigma)
            and self.regularisation >= 0
            and self.sigma >= 0
        ):
            raise PadimError("regularisation and sigma must be finite and non-negative")
        for name, value, choices in (
            ("score mode", self.score_mode, options.SCORE_MODES),
            ("shrinkage", self.shrinkage, options.SHRINKAGES),
            ("storage", self.storage, options.STORAGES),
            ("--covariance", self.covariance, options.COVARIANCES),
            ("statistics", self.statistics, options.STATISTICS_CHOICES),
            ("embedding", self.embedding, options.EMBEDDINGS),
            ("--align", self.align, options.ALIGN_MODES),
        ):
            if value not in choices:
                raise PadimError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        self._validate_covariance(spec.default_keep)
        k = self.neighbourhood
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_NEIGHBOURHOOD:
            raise PadimError(f"--neighbourhood must be from 0 to {MAX_NEIGHBOURHOOD}, got {k!r}")
        if k and self.tile is not None and self.tile_statistics == "shared":
            raise PadimError(
                "--neighbourhood needs --tile-statistics location (a grid of Gaussians)"
            )

    def _validate_covariance(self, default_dim: int) -> None:
        r, dim = self.components, self.channels or default_dim
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise PadimError(f"--components must be a whole number of at least 1, got {r!r}")
        if self.covariance == "minor" and r > dim:
            raise PadimError(f"--components {r} exceeds the embedding's {dim} channels")
        from padim.core.factorise import resolved_storage

        if self.storage == "auto":
            self.storage = resolved_storage(self.covariance)
        if self.storage == "int8" and self.covariance != "minor":
            raise PadimError("--storage int8 needs --covariance minor (full models: float16)")

    def _validate_tiling(self) -> None:
        from padim.core.tiling import TileGrid
        from padim.data.preprocess import Preprocess, as_wh

        if self.tile_statistics not in options.TILE_STATISTICS_CHOICES:
            raise PadimError(
                f"--tile-statistics must be one of {', '.join(options.TILE_STATISTICS_CHOICES)}, "
                f"got {self.tile_statistics!r}"
            )
        overlap = self.tile_overlap
        if overlap is not None and (not isinstance(overlap, int) or isinstance(overlap, bool)):
            raise PadimError(f"--tile-overlap must be a whole number of pixels, got {overlap!r}")
        if self.tile is None:
            return
        if isinstance(self.tile, list):
            self.tile = as_wh(self.tile)
        try:
            tile_wh = as_wh(self.tile)
        except PadimError:
            raise PadimError(f"--tile must be N or WxH, got {self.tile!r}") from None
        if not isinstance(self.size, str):  # else checked once the size is known
            TileGrid.build(Preprocess(self.size, self.crop).output_hw, tile_wh, self.tile_overlap)

    def representation(self) -> Representation:
        """How the fit keeps the per-position Gaussians (`padim.core.factorise`)."""
        from padim.core.factorise import Representation

        return Representation(self.covariance, self.components, self.storage)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def aligner(self, roi: np.ndarray | None = None) -> Aligner:
        """The (unfitted) registration this config describes, matching inside `roi`; the
        quality bound not yet learned is the lowest one."""
        from padim.data.align import MIN_QUALITY, Aligner

        quality = self.align_min_quality
        return Aligner(
            self.align,
            self.align_max_shift,
            self.align_max_angle,
            self.align_max_scale,
            MIN_QUALITY if quality is None else quality,
            roi,
        )


@dataclass
class TrainingSummary:
    """What a fit learned about its data besides the Gaussians (the model file's `info`)."""

    n_train: int
    n_holdout: int
    fit_seconds: float
    weights: str  # where the backbone weights came from
    good_score_summary: dict[str, float] = field(default_factory=dict)  # held-out good scores
    shrinkage_intensity: dict[str, float] | None = None  # Ledoit-Wolf rho over positions
    warning: str | None = None  # e.g. fitted on too few images to hold any out
    training_perturbation: str | None = None  # set by the Rd-MVTec benchmark protocol
    roi: dict[str, Any] | None = None  # the region of interest: its source, the inspected share
    updates: list[dict[str, Any]] | None = None  # `padim update`s: images added, seconds, when
    image_size: list[int] | None = None  # median (width, height) of the training images
    alignment: dict[str, Any] | None = None  # how well the training images were aligned
    image_digests: list[str] | None = None  # SHA-256 of every training image, sorted (lineage)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> TrainingSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in info.items() if k in known}
        values.setdefault("n_train", 0)
        values.setdefault("n_holdout", 0)
        values.setdefault("fit_seconds", 0.0)
        values.setdefault("weights", "unknown")
        return cls(**values)
