"""`Padim`: the estimator users call (fit / predict / save / load), scikit-learn style.

`__init__` only stores its parameters (so `get_params`, `set_params` and `sklearn.base.clone`
work); `fit` validates them and hands the work to a `Fitter` (`padim.model.fitting`). What a
fit learns lives in attributes with a trailing underscore: `config_` (the resolved config: the
input size "auto" chose, the channels), `net_` (the torch model), `calibration_` (thresholds and
operating points, `padim.model.thresholds`), `training_`, `statistics_`; `threshold_` and its
kin read `calibration_`. Persistence is `padim.model.modelfile` over a `ModelState`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from padim import options
from padim.core.backbones import get_backbone
from padim.core.net import PadimNet
from padim.core.tiling import TileGrid
from padim.data.aligned import AlignedItem, photo_geometry
from padim.data.decision import Geometry, Prediction, decide
from padim.data.images import ImageInput
from padim.data.preprocess import Preprocess, batches, image_shape, resolve_crop
from padim.data.sources import expand_inputs
from padim.errors import PadimError
from padim.model.config import PadimConfig
from padim.model.fitting import Fitter, Gather, Loader
from padim.model.sizing import Sizing
from padim.model.state import ModelState
from padim.model.thresholds_api import ThresholdsAPI
from padim.progress import ProgressSink, progress_bar

CONFIG_FIELDS = tuple(PadimConfig.__dataclass_fields__)
__all__ = ["Padim", "Prediction", "load", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" (a CUDA GPU if there is one), "cpu", "cuda" or "cuda:N" as a torch device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PadimError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PadimError("--device cuda requested but no CUDA GPU is available")
    return torch.device(device)


def validated_config(params: dict[str, Any]) -> PadimConfig:
    """The `PadimConfig` a model's parameters describe, checked: one clear line on any value a
    model cannot be built with (the size may still be "auto" or "native")."""
    channels = params["channels"]
    if channels == "all":
        channels = get_backbone(params["backbone"]).total_channels
    if isinstance(channels, str):
        raise PadimError(f"--channels must be a number or 'all', got {channels!r}")
    if params["batch_size"] < 1:
        raise PadimError(f"--batch-size must be at least 1, got {params['batch_size']}")
    values = {k: params[k] for k in CONFIG_FIELDS}
    values.update(channels=channels, crop=resolve_crop(params["size"], params["crop"]))
    config = PadimConfig(**values)
    config.validate()
    return config


class Padim(ThresholdsAPI):
    """PaDiM anomaly detector: per-patch Gaussians over a frozen CNN's features.

    Parameters
    ----------
    backbone : str
        Registered feature extractor (`padim backbones` lists them).
    size, crop : int, (width, height), "auto", "native"; crop also None or "default"
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
    align : "none", "translation", "rigid", "similarity" or "homography"
        Register every image onto a reference part before the features (`padim.data.align`);
        `align_reference` (an image; default: the most typical training image), `align_roi`
        (a mask at the reference's geometry: only its inside is matched; default: `roi`), and
        the bounds beyond which an image gets the verdict "cannot_align": `align_max_shift`
        (fraction of the longest side), `align_max_angle` (degrees), `align_max_scale`,
        `align_min_quality` (correlation with the reference).
    neighbourhood : int
        Score each patch by the nearest Gaussian within this many grid cells (0: the paper).
    seed : int
        Seed of the channel selection and of the held-out split.
    weights : str, Path or None
        None: ImageNet weights; "random": random initialisation; a path: a local state dict.
    batch_size : int
        Images per batch; memory does not grow with the number of images.
    device : str
        "auto", "cpu" or "cuda".
    covariance, components : str, int
        "full" Gaussians (the paper) or "minor": the `components` directions of least variance
        exactly, the rest as one variance (`padim.core.minor`).
    regularisation, sigma, holdout_fraction, threshold_quantile, storage, score_mode, shrinkage
        See `PadimConfig` and `padim.options` (`padim fit --help`) for meaning and defaults.
    roi : mask file, array or None
        Region of interest at the training images' geometry; outside it nothing is scored.
    statistics : str
        "keep": keep the training sums (in memory and in the model file) so `partial_fit` can
        add good images later; "drop": the Gaussians only (a smaller file).
    progress : bool or callable
        Show progress bars (on terminals only), or report to a `padim.progress.ProgressSink`
        (stage, done, total), which may raise to stop the work.

    Attributes
    ----------
    config_ : PadimConfig
        The resolved configuration (the input size chosen by "auto", crop and channels).
    net_ : PadimNet
        The fitted torch model (backbone, Gaussians, anomaly-map smoothing).
    calibration_ : Thresholds
        Thresholds and named operating points, with the held-out scores they rest on.
    threshold_, thresholds_, threshold_source_, operating_points_, operating_point_,
    score_scales_, holdout_scores_
        Views of `calibration_`: the current threshold, one per score mode, how it was chosen,
        the operating points and the current one's name, the held-out good scores' spread and
        the scores themselves, per score mode.
    aligner_ : Aligner or None
        The registration onto the reference part (`align` other than "none").
    statistics_ : GaussianStats or None
        The training sums (statistics="keep"): what `partial_fit` adds new images to.
    training_ : TrainingSummary or None
        Training-set size, fit time, weights, score summary of the held-out good images.
    device_ : torch.device
        Where the model runs.

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
        covariance: str = options.COVARIANCE.default,
        components: int = options.COMPONENTS.default,
        storage: str = options.STORAGE.default,
        score_mode: str = options.SCORE_MODE.default,
        shrinkage: str = options.SHRINKAGE.default,
        roi: str | Path | np.ndarray | None = options.ROI.default,
        tile: int | tuple[int, int] | None = options.TILE.default,
        tile_overlap: int | None = options.TILE_OVERLAP.default,
        tile_statistics: str = options.TILE_STATISTICS.default,
        statistics: str = options.KEEP_STATISTICS.default,
        embedding: str = options.EMBEDDING.default,
        align: str = options.ALIGN.default,
        align_reference: ImageInput | None = options.ALIGN_REFERENCE.default,
        align_roi: str | Path | np.ndarray | None = options.ALIGN_ROI.default,
        align_max_shift: float = options.ALIGN_MAX_SHIFT.default,
        align_max_angle: float = options.ALIGN_MAX_ANGLE.default,
        align_max_scale: float = options.ALIGN_MAX_SCALE.default,
        align_min_quality: float = options.ALIGN_MIN_QUALITY.default,
        neighbourhood: int = options.NEIGHBOURHOOD.default,
        progress: bool | ProgressSink = False,
    ) -> None:
        self.backbone = backbone
        self.size = size
        self.crop = crop
        self.channels = channels
        self.seed = seed
        self.weights = weights
        self.batch_size = batch_size
        self.device = device
        self.regularisation = regularisation
        self.sigma = sigma
        self.holdout_fraction = holdout_fraction
        self.threshold_quantile = threshold_quantile
        self.covariance = covariance
        self.components = components
        self.storage = storage
        self.score_mode = score_mode
        self.shrinkage = shrinkage
        self.roi = roi
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.tile_statistics = tile_statistics
        self.statistics = statistics
        self.embedding = embedding
        self.align = align
        self.align_reference = align_reference
        self.align_roi = align_roi
        self.align_max_shift = align_max_shift
        self.align_max_angle = align_max_angle
        self.align_max_scale = align_max_scale
        self.align_min_quality = align_min_quality
        self.neighbourhood = neighbourhood
        self.progress = progress

    # ------------------------------------------------------------------ parameters

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name (scikit-learn's contract)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Padim:
        """Change constructor parameters (a later `fit` uses them); returns self."""
        names = set(self._param_names())
        for key, value in params.items():
            if key not in names:
                raise PadimError(f"unknown parameter {key!r} for Padim")
            setattr(self, key, value)
        return self

    @classmethod
    def from_config(cls, config: PadimConfig, **kwargs: Any) -> Padim:
        """A model with `config`'s settings; `kwargs` are the run-time ones (weights,
        batch_size, device, progress)."""
        return cls(**config.to_dict(), **kwargs)

    @property
    def config(self) -> PadimConfig:
        """The fitted model's resolved config, or the parameters' (validated) before a fit."""
        fitted = getattr(self, "config_", None)
        return fitted if fitted is not None else validated_config(self.get_params())

    @property
    def device_(self) -> torch.device:
        """Where the model runs (resolved from `device` when it was fitted or loaded)."""
        device = getattr(self, "_device", None)
        return device if device is not None else resolve_device(self.device)

    @property
    def sizing(self) -> Sizing:
        """Geometry, memory and batch sizing of this model's config."""
        return Sizing(self.config)

    def fitter(self) -> Fitter:
        """A `Fitter` for this model's (validated) parameters."""
        config = validated_config(self.get_params())
        device = resolve_device(self.device)
        return Fitter(
            config,
            self.weights,
            device,
            self.batch_size,
            self.progress,
            self.roi,
            self.align_reference,
            self.align_roi,
        )

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        images: ImageInput | Iterable[ImageInput],
        loader: Loader | None = None,
        gather: Gather | None = None,
    ) -> Padim:
        """Fit the per-position Gaussians on good images and calibrate the threshold.

        Parameters
        ----------
        images : folder, path, PIL image, array, or an iterable of them
            Good images; a folder is an MVTec AD category (its train/good) or any folder of
            images (sub-folders included). They are streamed in batches.
        loader : callable, optional
            `loader(index, item)` replaces reading + resizing item `index` (see `Loader`).
        gather : callable, optional
            How the sums are computed (see `padim.model.fitting.Gather`): the Ray engine's.

        Returns
        -------
        Padim
            self, fitted; a fraction of the images was held out to calibrate `threshold_` and
            then added to the Gaussians.
        """
        return self._adopt(self.fitter().fit(images, loader, gather))

    def partial_fit(self, images: ImageInput | Iterable[ImageInput]) -> Padim:
        """Add good images to a fitted model without its old images.

        The new images' sums are merged into the kept training statistics (`statistics_`, the
        same exact merge a distributed fit uses), so the Gaussians equal a fit on all images.
        Threshold rule: `holdout_fraction` of the new images (a seeded split) are scored by
        the Gaussians before they are added; their scores join the held-out good scores kept in
        the model, and the quantile threshold, the normalised-score spread and every operating
        point chosen on held-out images are recomputed from that pool. Operating points chosen
        on labelled data keep their thresholds, with a warning to calibrate them again.
        An unfitted model is simply fitted.
        """
        if not self.is_fitted:
            return self.fit(images)
        state = self.state()
        fitter = Fitter(state.config, self.weights, state.device, self.batch_size, self.progress)
        return self._adopt(fitter.update(state, images))

    def state(self) -> ModelState:
        """The learned state as one object (what the model file holds)."""
        return ModelState(
            self.config,
            self.fitted_net(),
            self.calibration,
            getattr(self, "training_", None),
            getattr(self, "statistics_", None),
            self.device_,
            getattr(self, "aligner_", None),
        )

    def _adopt(self, state: ModelState) -> Padim:
        self.config_ = state.config
        self.net_ = state.net
        self.calibration_ = state.calibration
        self.training_ = state.training
        self.statistics_ = state.statistics
        self.aligner_ = state.aligner
        self._device = state.device
        return self

    # ------------------------------------------------------------------ learned state

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "net_", None) is not None

    def fitted_net(self) -> PadimNet:
        """The fitted torch model, or a clear error if there is none yet."""
        net = getattr(self, "net_", None)
        if net is None:
            raise PadimError("the model is not fitted yet: call fit() or padim.load()")
        return net

    @property
    def preprocess(self) -> Preprocess:
        """The input geometry (chosen from the training images by `fit` with size "auto")."""
        return self.sizing.preprocess

    @property
    def tile_grid(self) -> TileGrid | None:
        return self.sizing.tile_grid

    def geometry(self) -> dict[str, Any]:
        """What the geometry costs (see `Sizing.geometry`)."""
        return self.sizing.geometry()

    def check_memory(self, available: int | None = None, n_fit: int | None = None) -> None:
        """Refuse a geometry whose statistics cannot fit in memory (see `Sizing.check_memory`)."""
        self.sizing.check_memory(available, n_fit)

    def effective_batch(self) -> int:
        """Images per forward pass (see `Sizing.effective_batch`)."""
        return self.sizing.effective_batch(self.batch_size)

    @property
    def info(self) -> dict[str, Any]:
        """The learned state as one JSON-ready dict (the model file's `info`; read-only)."""
        training = getattr(self, "training_", None)
        out = training.to_dict() if training is not None else {}
        calibration = getattr(self, "calibration_", None)
        return {**out, **(calibration.to_info() if calibration is not None else {})}

    def progress_bar(self, total: int, desc: str, unit: str = "img") -> tqdm:
        """A progress bar shown when this model was made with `progress=True`."""
        return progress_bar(total, desc, unit, self.progress)

    def set_score_mode(self, mode: str) -> None:
        """Score with another mode; the threshold becomes the one calibrated for it."""
        self.fitted_net().set_score_mode(mode)
        self.calibration.set_mode(mode)
        self.config.score_mode = self.score_mode = mode

    # ------------------------------------------------------------------ inference

    def iter_batches(
        self, items: Sequence[ImageInput]
    ) -> Iterator[tuple[Sequence[ImageInput], np.ndarray, np.ndarray, np.ndarray]]:
        """Per batch: the items (`AlignedItem`s, holding their transforms, when the model
        aligns), their preprocessed images (B, 3, H, W), scores (B,) and anomaly maps
        (B, H, W) -- for callers that also want the pictures."""
        net = self.fitted_net()
        bar = self.progress_bar(len(items), "predict")
        pre = self.preprocess
        aligner = getattr(self, "aligner_", None)
        if aligner is not None:
            items = [AlignedItem(item, aligner) for item in items]
        with torch.inference_mode():
            chunks = list(batches(items, self.effective_batch()))
            for chunk, x in zip(chunks, pre.stream(chunks), strict=True):
                s, m = net(torch.from_numpy(x).to(self.device_))
                bar.update(len(chunk))
                yield chunk, x, s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()
        bar.close()

    def geometry_of(self, item: ImageInput) -> Geometry:
        """How an item's maps get back onto its photo: the model geometry, or through the
        item's alignment (an `AlignedItem` that was scored)."""
        transform = item.transform if isinstance(item, AlignedItem) else None
        return photo_geometry(self.preprocess, getattr(self, "aligner_", None), transform)

    def score_tensors(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) for images already at the model's input geometry
        ((B, 3, H, W) floats in [0, 1]): for callers that transform images themselves."""
        net = self.fitted_net()
        with torch.inference_mode():
            s, m = net(x.to(self.device_))
        return s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()

    def score(self, images: ImageInput | Iterable[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and anomaly maps (N, H, W) at the model's input geometry, float32."""
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

        `threshold` overrides `threshold_` for this call, `operating_point` uses that named
        operating point's; defect regions smaller than `min_area` pixels (of the image itself)
        are dropped.
        """
        self.fitted_net()
        items = expand_inputs(images)
        if not items:
            raise PadimError("no images to predict")
        thr = self.threshold_for(threshold, operating_point)
        scale = self.score_scale.at(thr)
        out = []
        for chunk, _, scores, maps in self.iter_batches(items):
            for item, s, m in zip(chunk, scores, maps, strict=True):
                source, transform, wh = item, None, None
                if isinstance(item, AlignedItem):  # read and registered already
                    source, transform, wh = item.source, item.transform, item.photo_size
                wh = wh or image_shape(source)
                geometry = self.geometry_of(item)
                d = decide(float(s), m, thr, scale, geometry, wh, min_area, transform)
                path = str(source) if isinstance(source, str | Path) else None
                out.append(
                    Prediction(
                        d.score,
                        d.is_anomalous,
                        thr,
                        m,
                        m > thr,
                        path,
                        d.normalised_score,
                        d.regions,
                        wh,
                        d.verdict,
                        d.reason,
                        None if transform is None else transform.to_dict(),
                        geometry,
                    )
                )
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the model (tensors + JSON config) to one safetensors file, atomically."""
        from padim.model.modelfile import write_model

        write_model(self.state(), path)
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

        state = read_model(path, resolve_device(device), statistics)
        model = cls.from_config(state.config, weights="random", batch_size=batch_size)
        model.device = device
        model._adopt(state)
        if score_mode is not None and score_mode != model.config.score_mode:
            model.set_score_mode(score_mode)
        return model


def load(
    path: str | Path,
    device: str = options.DEVICE.default,
    batch_size: int = options.BATCH_SIZE.default,
    score_mode: str | None = None,
    statistics: bool = False,
) -> Padim:
    """Load a model file written by `Padim.save` (formats 1-3) on `device` ("auto", "cpu",
    "cuda"), scoring `batch_size` images at a time, with `score_mode` (and its calibrated
    threshold) instead of the fitted one; `statistics` also reads the training sums that
    `partial_fit` (`padim update`) adds images to."""
    return Padim.load(path, device, batch_size, score_mode, statistics)
