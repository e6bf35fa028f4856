"""`Padim`: the estimator users call (fit / predict / save / load), scikit-learn style.

It orchestrates data, the torch model (`padim.core.net.PadimNet`) and the threshold. What a fit
learns lives in attributes with a trailing underscore (`net_`, `threshold_`, `thresholds_`,
`threshold_source_`, `training_`); persistence is `padim.model.modelfile`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from padim import options
from padim.core.backbones import get_backbone
from padim.core.features import Embedder, select_channels, semi_orthogonal
from padim.core.gaussian import BlockLayout, GaussianModel, GaussianStats, HeldOut, tril_size
from padim.core.holdout import HoldoutStore
from padim.core.net import PadimNet
from padim.core.scoring import SCORE_MODES, term_statistics
from padim.core.tiling import TiledEmbedder, TileGrid, Tiler
from padim.data.datasets import read_mask, training_images
from padim.data.images import ImageInput
from padim.data.preprocess import (
    AUTO_SAMPLE,
    Preprocess,
    as_wh,
    auto_size,
    batches,
    image_shape,
    native_size,
    resolve_crop,
)
from padim.data.regions import Region
from padim.data.sources import expand_inputs
from padim.errors import PadimError
from padim.memory import available_bytes
from padim.model.calibration import (
    OperatingPoint,
    f1_optimal_threshold,
    measured_point,
    now_iso,
    quantile_threshold,
    score_summary,
    target_fpr_threshold,
    target_recall_threshold,
)
from padim.model.config import (
    MIN_IMAGES_FOR_HOLDOUT,
    MIN_TRAIN_IMAGES,
    PadimConfig,
    TrainingSummary,
)
from padim.normalise import ScoreScale
from padim.progress import progress_bar

EMBED_BATCH_BYTES = 768 * 2**20
HELD_OUT = "held-out good training images"  # the data of thresholds an update re-estimates

Loader = Callable[[int, ImageInput], torch.Tensor]
"""`loader(index, item)` -> (3, S, S) tensor at the model's input geometry: replaces the usual
read + resize + crop of training item number `index` (seeded augmentations)."""


@dataclass
class FitPlan:
    """Which training items are fitted and which are held out to calibrate the threshold
    ((index, item) pairs in input order)."""

    n: int
    fit_items: list[tuple[int, ImageInput]]
    hold_items: list[tuple[int, ImageInput]]
    started: float  # perf_counter() when fitting began


@dataclass
class Prediction:
    """One image's result. `anomaly_map` and `mask` are at the model's input geometry;
    `regions` (largest peak first) are in pixels of the image itself (`image_size`)."""

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


def resolve_device(device: str) -> torch.device:
    """ "auto" (a CUDA GPU if there is one), "cpu", "cuda" or "cuda:N" as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PadimError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PadimError("--device cuda requested but no CUDA GPU is available")
    return torch.device(device)


class Padim:
    """PaDiM anomaly detector: per-patch Gaussians over a frozen CNN's features.

    Parameters
    ----------
    backbone : str
        Registered feature extractor (`padim backbones` lists them).
    size, crop : int, (width, height), "auto", "native"; crop also None
        Resize to `size`, then centre-crop to `crop` (None: no crop). "auto": the training
        images' aspect ratio at about 256x256 pixels; "native": their own size.
    tile, tile_overlap, tile_statistics : int or (width, height) or None, int, str
        Run the backbone on overlapping tiles of the input, stitched back without seams;
        "location" statistics: a Gaussian per position of the input, "shared": per position
        within a tile (memory independent of the input size). See `padim.core.tiling`.
    channels : int, "all" or None
        Embedding channels kept by the seeded random selection (None: the backbone's default).
    embedding : "random" or "semi-orthogonal"
        How the channels are made: a seeded random subset (the paper) or a seeded projection
        onto orthonormal directions (Kim et al. 2021).
    seed : int
        Seed of the channel selection and of the held-out split.
    weights : str, Path or None
        None: ImageNet weights; "random": random initialisation; a path: a local state dict.
    batch_size : int
        Images per batch; memory does not grow with the number of images.
    device : str
        "auto", "cpu" or "cuda".
    regularisation, sigma, holdout_fraction, threshold_quantile, storage, score_mode, shrinkage
        See `PadimConfig` and `padim.options` for their meaning and defaults.
    statistics : str
        "keep": keep the training sums (in memory and in the model file) so `partial_fit` can
        add good images later; "drop": the Gaussians only (a smaller file).
    progress : bool
        Show progress bars (on terminals only).

    Attributes
    ----------
    net_ : PadimNet or None
        The fitted torch model (backbone, Gaussians, anomaly-map smoothing).
    threshold_ : float or None
        Images (and pixels) scoring above it are anomalous, for the current score mode.
    thresholds_ : dict of str to float
        The calibrated threshold of every score mode.
    threshold_source_ : str or None
        How `threshold_` was chosen.
    operating_points_ : dict of str to OperatingPoint
        Named thresholds with their rule, data and measured rates ("fit", "f1", "fpr-0.01", ...).
    operating_point_ : str or None
        The name of the operating point `threshold_` comes from.
    score_scales_ : dict of str to float
        Per score mode, the spread of the held-out good scores: the width of the normalised
        score (`score_scale`).
    holdout_scores_ : dict of str to ndarray
        Per score mode, the held-out good images' scores (for `calibrate_fpr`, `partial_fit`).
    statistics_ : GaussianStats or None
        The training sums (statistics="keep"): what `partial_fit` adds new images to.
    training_ : TrainingSummary or None
        Training-set size, fit time, weights, score summary of the held-out good images.

    Examples
    --------
    >>> model = Padim(backbone="efficientnet_lite0", size=256, crop=None).fit("good/")
    >>> [p.score for p in model.predict(["a.png", "b.png"])]
    """

    def __init__(
        self,
        backbone: str = options.BACKBONE.default,
        size: int | tuple[int, int] | str = options.SIZE.default,
        crop: int | tuple[int, int] | str | None = options.CROP.default,
        channels: int | str | None = options.CHANNELS.default,
        seed: int = options.SEED.default,
        weights: str | Path | None = options.WEIGHTS.default,
        batch_size: int = options.BATCH_SIZE.default,
        device: str = options.DEVICE.default,
        regularisation: float = options.REGULARISATION.default,
        sigma: float = options.SIGMA.default,
        holdout_fraction: float = options.HOLDOUT.default,
        threshold_quantile: float = options.THRESHOLD_QUANTILE.default,
        storage: str = options.STORAGE.default,
        score_mode: str = options.SCORE_MODE.default,
        shrinkage: str = options.SHRINKAGE.default,
        roi: str | Path | np.ndarray | None = options.ROI.default,
        tile: int | tuple[int, int] | None = options.TILE.default,
        tile_overlap: int | None = options.TILE_OVERLAP.default,
        tile_statistics: str = options.TILE_STATISTICS.default,
        statistics: str = options.KEEP_STATISTICS.default,
        embedding: str = options.EMBEDDING.default,
        progress: bool = False,
    ) -> None:
        if channels == "all":
            channels = get_backbone(backbone).total_channels
        if isinstance(channels, str):
            raise PadimError(f"--channels must be a number or 'all', got {channels!r}")
        self.config = PadimConfig(
            backbone=backbone,
            size=size,
            crop=resolve_crop(size, crop),
            channels=channels,
            seed=seed,
            regularisation=regularisation,
            sigma=sigma,
            holdout_fraction=holdout_fraction,
            threshold_quantile=threshold_quantile,
            storage=storage,
            score_mode=score_mode,
            shrinkage=shrinkage,
            tile=tile,
            tile_overlap=tile_overlap,
            tile_statistics=tile_statistics,
            statistics=statistics,
            embedding=embedding,
        )
        self.config.validate()
        if batch_size < 1:
            raise PadimError(f"--batch-size must be at least 1, got {batch_size}")
        self.weights = weights
        self.roi = roi  # the region of interest as given (a mask file or array); see _roi_mask
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.progress = progress
        self.net_: PadimNet | None = None
        self.threshold_: float | None = None
        self.thresholds_: dict[str, float] = {}
        self.threshold_source_: str | None = None
        self.training_: TrainingSummary | None = None
        self.operating_points_: dict[str, OperatingPoint] = {}
        self.operating_point_: str | None = None
        self.score_scales_: dict[str, float] = {}
        self.holdout_scores_: dict[str, np.ndarray] = {}
        self.statistics_: GaussianStats | None = None

    @classmethod
    def from_config(cls, config: PadimConfig, **kwargs: Any) -> Padim:
        """A model with `config`'s settings; `kwargs` are the run-time ones (weights,
        batch_size, device, progress)."""
        return cls(**config.to_dict(), **kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def preprocess(self) -> Preprocess:
        """The input geometry (chosen from the training images by `fit` with size "auto")."""
        size = self.config.size
        if isinstance(size, str):
            raise PadimError(
                "the input size is chosen from the training images when fitting "
                f"(--size {size}): fit the model first"
            )
        return Preprocess(size, self.config.crop)

    @property
    def is_fitted(self) -> bool:
        return self.net_ is not None

    def fitted_net(self) -> PadimNet:
        """The fitted torch model, or a clear error if there is none yet."""
        if self.net_ is None:
            raise PadimError("the model is not fitted yet: call fit() or padim.load()")
        return self.net_

    @property
    def info(self) -> dict[str, Any]:
        """The learned state as one JSON-ready dict (the model file's `info`; read-only)."""
        out = self.training_.to_dict() if self.training_ is not None else {}
        if self.threshold_source_ is not None:
            out["threshold_source"] = self.threshold_source_
        if self.thresholds_:
            out["thresholds"] = dict(self.thresholds_)
        if self.score_scales_:
            out["score_scales"] = dict(self.score_scales_)
        if self.operating_points_:
            out["operating_points"] = {k: p.to_dict() for k, p in self.operating_points_.items()}
            out["operating_point"] = self.operating_point_
        return out

    @property
    def score_scale(self) -> ScoreScale:
        """The normalised score's mapping at the current threshold (see `padim.normalise`)."""
        return ScoreScale.of(self._threshold(None), self.score_scales_.get(self.config.score_mode))

    def progress_bar(self, total: int, desc: str, unit: str = "img") -> tqdm:
        """A progress bar shown when this model was made with `progress=True`."""
        return progress_bar(total, desc, unit, self.progress)

    # ------------------------------------------------------------------ fitting

    def build_embedder(self) -> Embedder | TiledEmbedder:
        """The frozen backbone + channel selection (+ tiling) this model's config describes."""
        spec = get_backbone(self.config.backbone)
        extractor = spec.build(self.weights, seed=self.config.seed)
        keep = self.config.channels or spec.default_keep
        projection = None
        if self.config.embedding == "semi-orthogonal":
            idx = torch.arange(spec.total_channels)
            projection = semi_orthogonal(spec.total_channels, keep, self.config.seed)
        else:
            idx = select_channels(spec.total_channels, keep, self.config.seed)
        embedder = Embedder(
            extractor, spec.normalisation, spec.channels, idx, spec.cpu_batch, projection
        )
        return self.with_tiles(embedder).to(self.device)

    @property
    def tile_grid(self) -> TileGrid | None:
        """How the input is cut into tiles (None: it is not)."""
        if self.config.tile is None:
            return None
        return TileGrid.build(
            self.preprocess.output_hw, as_wh(self.config.tile), self.config.tile_overlap
        )

    def with_tiles(self, embedder: Embedder) -> Embedder | TiledEmbedder:
        """`embedder` run tile by tile when the config tiles the input."""
        grid = self.tile_grid
        if grid is None:
            return embedder
        return TiledEmbedder(embedder, Tiler(grid), self.config.tile_statistics)

    def geometry(self) -> dict[str, Any]:
        """What the chosen geometry costs: input, tiles, Gaussian positions, embedding size and
        the bytes of the Gaussians in the model file and while fitting (float64 sums)."""
        spec = get_backbone(self.config.backbone)
        dim = self.config.channels or spec.default_keep
        grid = self.tile_grid
        if grid is None:
            gh, gw = (spec.grid_side(side) for side in self.preprocess.output_hw)
        else:
            gh, gw = grid.tile_grid_hw if self.config.tile_statistics == "shared" else grid.grid_hw
        positions = gh * gw
        stored = 2 if self.config.storage == "float16" else 4
        tril = tril_size(dim)
        out: dict[str, Any] = {
            "input": list(self.preprocess.output_wh),
            "positions": positions,
            "embedding_dim": dim,
            "gaussian_file_bytes": positions * (tril * stored + 2 * dim * 4),
            "fit_statistics_bytes": positions * (BlockLayout.for_dim(dim).size * 8 + dim * 16),
            "statistics_file_bytes": (
                positions * (tril + 2 * dim) * 8 if self.config.statistics == "keep" else 0
            ),
        }
        if grid is not None:
            out["tiling"] = {**grid.describe(), "statistics": self.config.tile_statistics}
        return out

    def check_memory(self, available: int | None = None, n_fit: int | None = None) -> None:
        """Refuse, before any work, a geometry whose statistics cannot fit in memory (the sums
        are float64, about 1.2x the model's Gaussians while they are factorised; kept
        statistics stay beside the Gaussians; fitted from embeddings on disk (`n_fit` images,
        see `_embeddings_on_disk`) only the float32 Gaussians and one chunk's sums)."""
        available = available_bytes() if available is None else available
        g = self.geometry()
        factor = 1.6 if self.config.statistics == "keep" else 1.25
        if n_fit is not None and self._embeddings_on_disk(n_fit, g["embedding_dim"]):
            factor = 0.75
        need = int(g["fit_statistics_bytes"] * factor)
        if available is not None and need > available:
            raise PadimError(
                f"this geometry needs about {need / 2**30:.1f} GiB to fit ({g['positions']:,} "
                f"positions x {g['embedding_dim']} channels) and {available / 2**30:.1f} GiB is "
                "available: use --tile-statistics shared, fewer --channels or a smaller --size"
            )

    def effective_batch(self) -> int:
        """Images per forward pass: `batch_size`, fewer when one image's embeddings are large
        (native resolution, many tiles), so a batch's embeddings stay near EMBED_BATCH_BYTES."""
        g = self.geometry()
        tiling = g.get("tiling")
        samples = 1  # embedding grids per image of the Gaussians' size: a tile's when shared
        if tiling is not None and tiling["statistics"] == "shared":
            samples = tiling["tiles"][0] * tiling["tiles"][1]
        cells = g["positions"] * samples
        per_image = cells * g["embedding_dim"] * 4 * 3  # embeddings, by position, float64 chunk
        return max(1, min(self.batch_size, EMBED_BATCH_BYTES // per_image))

    def fit(self, images: ImageInput | Iterable[ImageInput], loader: Loader | None = None) -> Padim:
        """Fit the per-position Gaussians on good images and calibrate the threshold.

        Parameters
        ----------
        images : folder, path, PIL image, array, or an iterable of them
            Good images; a folder is an MVTec AD category (its train/good) or any folder of
            images (sub-folders included). They are streamed in batches.
        loader : callable, optional
            `loader(index, item)` replaces reading + resizing item `index` (see `Loader`).

        Returns
        -------
        Padim
            self, fitted; a fraction of the images was held out to calibrate `threshold_` and
            then added to the Gaussians.
        """
        plan = self.plan_fit(images)
        self.check_memory(n_fit=len(plan.fit_items))
        embedder = self.build_embedder()
        bar = self.progress_bar(plan.n, "fit")
        with torch.inference_mode(), HoldoutStore() as holdout, HoldoutStore() as train:
            batches = self._embeddings(embedder, plan.fit_items, loader, bar)
            if self._embeddings_on_disk(len(plan.fit_items), embedder.dim):
                for emb in batches:
                    train.add(emb)
                stats = GaussianStats.from_store(train)
            else:
                stats = GaussianStats.from_batches(batches)
            # held out: kept on disk, scored by a model that never saw them, then added
            for emb in self._embeddings(embedder, plan.hold_items, loader, bar):
                holdout.add(emb)
            bar.close()
            return self.finish_fit(plan, embedder, stats, holdout, loader)

    def _embeddings_on_disk(self, n: int, dim: int) -> bool:
        """Whether to fit from the embeddings kept on disk (two passes, memory of one chunk of
        positions) rather than from float64 sums held in memory (one pass, memory set by the
        channels alone): on disk when they take at most 4x the memory the sums would, and
        the sums are not to be kept in the model file."""
        sums = BlockLayout.for_dim(dim).size * 8  # bytes per position in memory
        return self.config.statistics != "keep" and n * dim * 4 <= 4 * sums

    def _embeddings(
        self,
        embedder: Embedder | TiledEmbedder,
        items: Sequence[tuple[int, ImageInput]],
        loader: Loader | None,
        bar: tqdm,
    ) -> Iterator[torch.Tensor]:
        """Embedding batches of `items`, counted on `bar`."""
        for x in self.tensor_batches(items, loader):
            yield embedder(x)
            bar.update(len(x))

    def plan_fit(self, images: ImageInput | Iterable[ImageInput]) -> FitPlan:
        """The training items and their seeded split into fitted and held-out images (the same
        for every engine, so a distributed fit sees exactly the local fit's images)."""
        items = self._training_items(images)
        n = len(items)
        if self.config.size in ("auto", "native") and n:
            sample = items[:: max(1, n // AUTO_SAMPLE)][:AUTO_SAMPLE]
            shapes = [image_shape(item) for item in sample]
            self.config.size = (auto_size if self.config.size == "auto" else native_size)(shapes)
            self.config.validate()  # the tiles, now that the input size is known
        if n < MIN_TRAIN_IMAGES:
            raise PadimError(
                f"need at least {MIN_TRAIN_IMAGES} good training images to fit a "
                f"covariance, got {n}"
            )
        return self._split(items, np.random.default_rng(self.config.seed), MIN_TRAIN_IMAGES)

    @staticmethod
    def _training_items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
        """A folder's training images (an MVTec category's train/good), or the items given."""
        if isinstance(images, str | Path) and Path(images).is_dir():
            return list(training_images(images))
        return expand_inputs(images)

    def _split(self, items: list[ImageInput], rng: np.random.Generator, keep: int) -> FitPlan:
        """Hold out `holdout_fraction` of the items (none when fewer than
        MIN_IMAGES_FOR_HOLDOUT), keeping at least `keep` of them to fit."""
        n = len(items)
        order = rng.permutation(n)
        n_hold = 0
        if n >= MIN_IMAGES_FOR_HOLDOUT:
            n_hold = max(0, min(n - keep, round(self.config.holdout_fraction * n)))
        indexed = list(enumerate(items))
        return FitPlan(
            n=n,
            fit_items=[indexed[i] for i in sorted(order[: n - n_hold])],
            hold_items=[indexed[i] for i in sorted(order[n - n_hold :])],
            started=time.perf_counter(),
        )

    def finish_fit(
        self,
        plan: FitPlan,
        embedder: Embedder | TiledEmbedder,
        stats: GaussianStats,
        holdout: HoldoutStore | torch.Tensor | None,
        loader: Loader | None = None,
    ) -> Padim:
        """Factorise the summed statistics, score the held-out embeddings and calibrate a
        threshold per score mode (consumes `stats`)."""
        with torch.inference_mode():
            keep = self.config.statistics == "keep"
            factor_bar = self.progress_bar(stats.positions, "factorise", unit="pos")
            gaussian, held_out = GaussianModel.fit(
                stats,
                self.config.regularisation,
                holdout,
                consume=not keep,
                on_chunk=factor_bar.update,
                shrinkage=self.config.shrinkage,
            )
            factor_bar.close()
            self.statistics_ = stats if keep else None  # every image's sums, held-out included
            del stats, holdout
            roi = self._roi_mask(plan)
            net = PadimNet(
                embedder, gaussian, self.config.sigma, self.config.score_mode, roi=roi
            ).eval()
            self.net_ = net
            source = HELD_OUT
            if held_out is not None:
                held_out = net.stitch_held_out(held_out)
            if held_out is None:  # too few images to hold any out: in-sample terms (optimistic)
                held_out = self._in_sample_terms(net, plan.fit_items, loader)
                source = "in-sample good training images (too few to hold out)"
            net.term_stats = term_statistics(held_out.mahalanobis, held_out.chebyshev)
            scores = self._mode_scores(net, held_out)
        n_cal = held_out.mahalanobis.shape[0]
        self._calibrate_quantiles(scores, f"{n_cal} {source}")
        self.training_ = TrainingSummary(
            n_train=plan.n,
            n_holdout=len(plan.hold_items),
            fit_seconds=round(time.perf_counter() - plan.started, 3),
            weights=self._weights_description(),
            good_score_summary=score_summary(scores[self.config.score_mode]),
            shrinkage_intensity=(
                None
                if gaussian.shrinkage_rho is None
                else score_summary(gaussian.shrinkage_rho.numpy())
            ),
            warning=(
                f"fitted on {plan.n} image(s): the threshold comes from the training "
                "images themselves; calibrate it on labelled data"
                if plan.n < MIN_IMAGES_FOR_HOLDOUT
                else None
            ),
            roi=None
            if roi is None
            else {
                "source": "array" if isinstance(self.roi, np.ndarray) else Path(str(self.roi)).name,
                "inside_fraction": round(float(roi.float().mean()), 6),
            },
        )
        return self

    def partial_fit(self, images: ImageInput | Iterable[ImageInput]) -> Padim:
        """Add good images to a fitted model without its old images.

        The new images' sums are merged into the kept training statistics (`statistics_`, the
        same exact merge a distributed fit uses), so the Gaussians equal a fit on all images.
        Threshold rule: `holdout_fraction` of the new images (a seeded split) are scored by the
        Gaussians before they are added; their scores join the held-out good scores kept in
        the model, and the quantile threshold, the normalised-score spread and every operating
        point chosen on held-out images are recomputed from that pool. Operating points chosen
        on labelled data keep their thresholds, with a warning to calibrate them again.
        An unfitted model is simply fitted.
        """
        if not self.is_fitted:
            return self.fit(images)
        if self.statistics_ is None:
            raise PadimError(
                "this model keeps no training statistics (fitted with --statistics drop, "
                "or by an older padim): fit it again on all images, with --statistics keep"
            )
        items = self._training_items(images)
        if not items:
            raise PadimError("no new images to add")
        updates = list(self.training_.updates or []) if self.training_ else []
        plan = self._split(items, np.random.default_rng([self.config.seed, len(updates) + 1]), 0)
        net = self.fitted_net()
        bar = self.progress_bar(plan.n, "update")
        with torch.inference_mode(), HoldoutStore() as holdout:
            stats = self.statistics_
            if plan.fit_items:
                new = GaussianStats.from_batches(
                    self._embeddings(net.embedder, plan.fit_items, None, bar)
                )
                stats = stats.merge(new)
            for emb in self._embeddings(net.embedder, plan.hold_items, None, bar):
                holdout.add(emb)
            bar.close()
            if stats is self.statistics_:  # GaussianModel.fit adds the held-out images to it
                stats = stats.copy()
            gaussian, held_out = GaussianModel.fit(
                stats,
                self.config.regularisation,
                holdout,
                shrinkage=self.config.shrinkage,
            )
            net.set_gaussian(gaussian)
            new_scores: dict[str, np.ndarray] = {}
            if held_out is not None:
                new_scores = self._mode_scores(net, net.stitch_held_out(held_out))
        self.statistics_ = stats
        self._recalibrate_after_update(new_scores)
        seconds = round(time.perf_counter() - plan.started, 3)
        updates.append(
            {
                "added": plan.n,
                "held_out": len(plan.hold_items),
                "seconds": seconds,
                "when": now_iso(),
            }
        )
        if self.training_ is not None:
            self.training_.n_train += plan.n
            self.training_.n_holdout += len(plan.hold_items)
            self.training_.updates = updates
            mode = self.config.score_mode
            if mode in self.holdout_scores_:
                self.training_.good_score_summary = score_summary(self.holdout_scores_[mode])
        return self

    def _recalibrate_after_update(self, new_scores: dict[str, np.ndarray]) -> None:
        """Pool the new held-out scores with the kept ones and recompute what rests on them."""
        pooled = {
            m: np.concatenate([self.holdout_scores_.get(m, np.empty(0)), new_scores.get(m, [])])
            for m in SCORE_MODES
        }
        if not all(v.size for v in pooled.values()):
            return  # nothing held out, ever: keep the thresholds as they are
        current = self.operating_point_
        self._calibrate_quantiles(pooled, f"{pooled[self.config.score_mode].size} {HELD_OUT}")
        for name, point in self.operating_points_.items():  # "fit" is recomputed already
            fpr = (point.target or {}).get("fpr")
            if name == "fit":
                continue
            if fpr is not None and point.data.endswith(HELD_OUT):
                good = pooled[point.score_mode]
                self.operating_points_[name] = measured_point(
                    name,
                    target_fpr_threshold(good, fpr),
                    point.score_mode,
                    point.rule,
                    f"{good.size} {HELD_OUT}",
                    good,
                    target=point.target,
                )
            else:
                point.warning = (
                    "chosen before images were added with padim update: calibrate it again"
                )
        if current is not None and current in self.operating_points_:
            self._activate(self.operating_points_[current])

    def _roi_mask(self, plan: FitPlan) -> torch.Tensor | None:
        """The region of interest at the model input (H, W) bool, from `roi` given at the
        training images' geometry (same aspect ratio), or None."""
        if self.roi is None:
            return None
        mask = self.roi if isinstance(self.roi, np.ndarray) else read_mask(self.roi)
        mask = np.asarray(mask).astype(bool)
        if mask.ndim != 2:
            raise PadimError(
                f"the region of interest must be a single-channel mask, got shape {mask.shape}"
            )
        w, h = image_shape(plan.fit_items[0][1])
        if abs(mask.shape[1] / mask.shape[0] - w / h) > 0.02 * w / h:
            raise PadimError(
                f"the region of interest is {mask.shape[1]}x{mask.shape[0]} but the "
                f"training images are {w}x{h}: give it at their geometry"
            )
        roi = self.preprocess.mask(mask)
        if not roi.any():
            raise PadimError("the region of interest is empty at the model's input geometry")
        return torch.from_numpy(np.ascontiguousarray(roi)).to(self.device)

    def _in_sample_terms(
        self, net: PadimNet, items: Sequence[tuple[int, ImageInput]], loader: Loader | None
    ) -> HeldOut:
        maha, cheb = [], []
        for x in self.tensor_batches(items, loader):
            m, c = net.terms(net.embedder(x), "hybrid")
            assert m is not None and c is not None  # "hybrid" needs both terms
            maha.append(m)
            cheb.append(c)
        return HeldOut(torch.cat(maha), torch.cat(cheb))

    def _mode_scores(self, net: PadimNet, held: HeldOut) -> dict[str, np.ndarray]:
        """The held-out images' scores (float64) under every score mode."""
        size = self.preprocess.output_hw
        out = {}
        n = held.mahalanobis.shape[0]
        step = self.effective_batch()  # full-size maps of a few images at a time
        for mode in SCORE_MODES:
            parts = [
                net.maps_from_terms(
                    held.mahalanobis[i : i + step], held.chebyshev[i : i + step], size, mode
                )[0]
                for i in range(0, n, step)
            ]
            out[mode] = torch.cat(parts).double().cpu().numpy()
        return out

    def _calibrate_quantiles(self, scores: dict[str, np.ndarray], data: str) -> None:
        """From the held-out good scores of every mode: the quantile thresholds, the normalised
        score's spread, and the "fit" operating point (made current)."""
        q = self.config.threshold_quantile
        self.holdout_scores_ = {m: np.asarray(v, np.float64) for m, v in scores.items()}
        for mode, values in self.holdout_scores_.items():
            self.thresholds_[mode] = quantile_threshold(values, q)
            self.score_scales_[mode] = float(values.std())
        mode = self.config.score_mode
        self._activate(
            measured_point(
                "fit",
                self.thresholds_[mode],
                mode,
                f"quantile {q} of the scores",
                data,
                self.holdout_scores_[mode],
            )
        )

    def set_score_mode(self, mode: str) -> None:
        """Score with another mode; the threshold becomes the one calibrated for it."""
        net = self.fitted_net()
        net.set_score_mode(mode)
        if mode not in self.thresholds_:
            raise PadimError(
                f"this model has no calibrated threshold for score mode {mode}: "
                "re-fit it with this padim"
            )
        self.config.score_mode = mode
        self.threshold_ = float(self.thresholds_[mode])
        same = [
            p.name
            for p in self.operating_points_.values()
            if p.score_mode == mode and p.threshold == self.threshold_
        ]
        self.operating_point_ = same[0] if same else None

    def _weights_description(self) -> str:
        if self.weights is None:
            return f"imagenet ({get_backbone(self.config.backbone).weights_source})"
        return "random" if str(self.weights) == "random" else f"file {Path(self.weights).name}"

    def tensor_batches(
        self, items: Sequence[tuple[int, ImageInput]], loader: Loader | None = None
    ) -> Iterator[torch.Tensor]:
        """Batches of (index, item) pairs as image tensors on the model's device."""
        chunks = batches(items, self.effective_batch())
        if loader is None:  # read and resize the next batch while this one is embedded
            for x in self.preprocess.stream([item for _, item in c] for c in chunks):
                yield torch.from_numpy(x).to(self.device)
            return
        for chunk in chunks:
            yield torch.stack([loader(i, item) for i, item in chunk]).to(self.device)

    # ------------------------------------------------------------------ inference

    def iter_batches(
        self, items: Sequence[ImageInput]
    ) -> Iterator[tuple[Sequence[ImageInput], np.ndarray, np.ndarray, np.ndarray]]:
        """Per batch: the items, their preprocessed images (B, 3, H, W), scores (B,) and
        anomaly maps (B, H, W) -- for callers that also want the pictures."""
        net = self.fitted_net()
        bar = self.progress_bar(len(items), "predict")
        pre = self.preprocess
        with torch.inference_mode():
            chunks = list(batches(items, self.effective_batch()))
            for chunk, x in zip(chunks, pre.stream(chunks), strict=True):
                s, m = net(torch.from_numpy(x).to(self.device))
                bar.update(len(chunk))
                yield chunk, x, s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()
        bar.close()

    def score_tensors(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) for images already at the model's input geometry
        ((B, 3, H, W) floats in [0, 1]): for callers that transform images themselves."""
        net = self.fitted_net()
        with torch.inference_mode():
            s, m = net(x.to(self.device))
        return s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()

    def score(self, images: ImageInput | Iterable[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and anomaly maps.

        Returns
        -------
        scores : ndarray, shape (N,), float32
        maps : ndarray, shape (N, H, W), float32, at the model's input geometry
        """
        items = expand_inputs(images)
        if not items:
            raise PadimError("no images to score")
        parts = [(s, m) for _, _, s, m in self.iter_batches(items)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | None = None,
        operating_point: str | None = None,
        min_area: int = options.MIN_AREA.default,
    ) -> list[Prediction]:
        """Score, verdict, normalised score, anomaly map, mask and defect regions per image.

        Parameters
        ----------
        images : folder, path, PIL image, array, or an iterable of them
        threshold : float, optional
            Overrides `threshold_` for this call.
        operating_point : str, optional
            Use this named operating point's threshold instead (see `operating_points_`).
        min_area : int
            Defect regions smaller than this many pixels (of the image itself) are dropped.

        Returns
        -------
        list of Prediction
        """
        self.fitted_net()
        items = expand_inputs(images)
        thr = self.threshold_for(threshold, operating_point)
        scale = self.score_scale.at(thr)
        scores, maps = self.score(items)
        out = []
        for item, s, m in zip(items, scores, maps, strict=True):
            wh = image_shape(item)
            out.append(
                Prediction(
                    score=float(s),
                    is_anomalous=bool(s > thr),
                    threshold=thr,
                    anomaly_map=m,
                    mask=m > thr,
                    path=str(item) if isinstance(item, str | Path) else None,
                    normalised_score=scale.one(float(s)),
                    regions=self.preprocess.regions(m, thr, wh, min_area, scale),
                    image_size=wh,
                )
            )
        return out

    def _threshold(self, override: float | None) -> float:
        if override is not None:
            return float(override)
        if self.threshold_ is None:
            raise PadimError("the model has no threshold: fit it or set one")
        return self.threshold_

    def threshold_for(self, threshold: float | None = None, name: str | None = None) -> float:
        """A given threshold, a named operating point's, or the current one."""
        if name is None:
            return self._threshold(threshold)
        if threshold is not None:
            raise PadimError("give either a threshold or an operating point, not both")
        return self.operating_point(name).threshold

    def operating_point(self, name: str) -> OperatingPoint:
        """The named operating point, usable with the current score mode."""
        point = self.operating_points_.get(name)
        if point is None:
            known = ", ".join(sorted(self.operating_points_)) or "none"
            raise PadimError(f"no operating point {name!r} in this model (it has: {known})")
        if point.score_mode != self.config.score_mode:
            raise PadimError(
                f"operating point {name!r} was chosen for score mode {point.score_mode}, "
                f"not {self.config.score_mode}"
            )
        return point

    def use_operating_point(self, name: str) -> None:
        """Make a stored operating point the model's threshold."""
        self._activate(self.operating_point(name))

    def add_operating_point(self, point: OperatingPoint) -> None:
        """Store `point` under its name (replacing one of that name) and make it current."""
        if point.score_mode != self.config.score_mode:
            raise PadimError(
                f"operating point for score mode {point.score_mode}, the model scores with "
                f"{self.config.score_mode}"
            )
        self._activate(point)

    def _activate(self, point: OperatingPoint) -> None:
        self.operating_points_[point.name] = point
        self.threshold_ = point.threshold
        self.thresholds_[point.score_mode] = point.threshold
        self.threshold_source_ = point.describe()
        self.operating_point_ = point.name

    def set_threshold(
        self, value: float, source: str = "set by user", name: str = "manual"
    ) -> None:
        """Use `value` as the current score mode's threshold (operating point `name`); `source`
        says how it was chosen."""
        if not np.isfinite(value):
            raise PadimError(f"threshold must be a finite number, got {value}")
        self.add_operating_point(
            OperatingPoint(name, float(value), self.config.score_mode, source, "no data")
        )

    def calibrate(self, scores: np.ndarray, labels: np.ndarray, name: str = "f1") -> float:
        """Set the F1-optimal threshold of labelled validation scores (label 1 = anomalous);
        returns it."""
        thr = f1_optimal_threshold(labels, scores)
        self._labelled_point(name, thr, "F1-optimal", scores, labels)
        return thr

    def calibrate_recall(
        self, scores: np.ndarray, labels: np.ndarray, recall: float, name: str | None = None
    ) -> OperatingPoint:
        """The threshold finding at least `recall` of the anomalous images with the best
        precision, on labelled validation scores; made current."""
        thr = target_recall_threshold(labels, scores, recall)
        return self._labelled_point(
            name or f"recall-{recall:g}",
            thr,
            f"target recall {recall:g}",
            scores,
            labels,
            {"recall": recall},
        )

    def _labelled_point(
        self,
        name: str,
        threshold: float,
        rule: str,
        scores: np.ndarray,
        labels: np.ndarray,
        target: dict[str, float] | None = None,
    ) -> OperatingPoint:
        scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
        point = measured_point(
            name,
            threshold,
            self.config.score_mode,
            rule,
            f"{len(labels)} labelled validation images",
            scores[labels == 0],
            scores[labels == 1],
            target,
        )
        self.add_operating_point(point)
        return point

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
        mode = self.config.score_mode
        if good_scores is None:
            if mode not in self.holdout_scores_:
                raise PadimError(
                    "this model keeps no held-out good scores (written by an older padim): "
                    "give a folder of good images"
                )
            good_scores = self.holdout_scores_[mode]
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
        self.add_operating_point(point)
        return point

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the model (tensors + JSON config) to one safetensors file, atomically."""
        from padim.model.modelfile import write_model

        write_model(self, path)
        return Path(path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = options.DEVICE.default,
        batch_size: int = options.BATCH_SIZE.default,
        score_mode: str | None = None,
        statistics: bool = False,
    ) -> Padim:
        """Rebuild a fitted model from its file (no network: backbone weights are inside);
        `score_mode` replaces the mode it was fitted with (and its threshold); `statistics`
        also reads the training sums, which only `partial_fit` needs."""
        from padim.model.modelfile import read_model

        model = read_model(cls, path, device, batch_size, statistics)
        if score_mode is not None and score_mode != model.config.score_mode:
            model.set_score_mode(score_mode)
        return model


def load(
    path: str | Path,
    device: str = options.DEVICE.default,
    batch_size: int = options.BATCH_SIZE.default,
    score_mode: str | None = None,
) -> Padim:
    """Load a model file written by `Padim.save`.

    Parameters
    ----------
    path : str or Path
        A `.safetensors` model file (formats 1-3).
    device : str
        "auto", "cpu" or "cuda".
    batch_size : int
        Images per batch when scoring.
    score_mode : str, optional
        Score with this mode (and its calibrated threshold) instead of the fitted one.

    Returns
    -------
    Padim
        A fitted model.
    """
    return Padim.load(path, device=device, batch_size=batch_size, score_mode=score_mode)
